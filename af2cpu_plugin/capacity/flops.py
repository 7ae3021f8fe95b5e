"""The matmul work of one recycling pass, counted from the model's shapes.

The cost model's time term: 2·m·n·k for every GEMM and attention product the
engine runs, module by module (Suppl. Alg. 6-18 at ColabFold's widths). The
products ``bench/flops.py`` counts on a real pass agree with it
(``tests/test_cost_model.py``). Elementwise work is left to the cost model's
per-pair-element term.
"""

from __future__ import annotations

from typing import Optional

# AlphaFold2's widths (model config): MSA, pair, extra-MSA and template channels.
C_M, C_Z, C_E, C_T = 256, 128, 64, 64
OPM = 32  # outer product mean's projection width
MAIN_BLOCKS, EXTRA_BLOCKS, TEMPLATE_BLOCKS = 48, 4, 2


def pair_stack_flops(L: int, c: int, intermediate: int, att_dim: int, transition_factor: int) -> float:
    """Two triangle multiplications, two triangle attentions and a transition on an [L, L, c] pair."""
    trimul = 2 * L * L * c * 4 * intermediate + 2 * 2 * L * L * c * c + 2 * L ** 3 * intermediate
    triatt = 2 * L * L * c * 4 * att_dim + 2 * L * L * att_dim * c + 4 * L ** 3 * att_dim
    transition = 2 * 2 * L * L * c * transition_factor * c
    return 2 * trimul + 2 * triatt + transition


def msa_block_flops(L: int, S: int, c: int, att_dim: int, global_column: bool) -> float:
    """Row attention with pair bias, column (or global column) attention, transition, outer product mean."""
    row = 2 * S * L * c * 5 * att_dim + 4 * S * L * L * att_dim + 2 * L * L * C_Z * 8
    if global_column:
        column = 2 * S * L * c * (att_dim + 2 * att_dim // 8) + 2 * S * L * att_dim * c
    else:
        column = 2 * S * L * c * 5 * att_dim + 4 * L * S * S * att_dim
    transition = 2 * 2 * S * L * c * 4 * c
    return row + column + transition + opm_flops(L, S, c)


def opm_flops(L: int, S: int, c: int, projected_first: Optional[bool] = None) -> float:
    """The outer product mean in the order the engine picks (``projected_first`` None), or the one given
    (False: haiku's order, which JAX runs)."""
    if projected_first is None:
        from af2cpu_plugin.engine.outer_product_mean import projects_first  # the engine's own choice

        projected_first = projects_first(S, L, OPM, C_Z)  # as in fp32 (bf16 projects first up to 2x longer)
    opm = 2 * 2 * S * L * c * OPM  # left and right projections
    if projected_first:  # right rows through output_w, then one contraction with the left
        return opm + 2 * S * L * OPM * OPM * C_Z + 2 * L * L * S * OPM * C_Z
    return opm + 2 * L * L * S * OPM * OPM + 2 * L * L * OPM * OPM * C_Z  # summed over sequences, then output_w


def haiku_order_extra_flops(L: int, S: int = 1, E: int = 1) -> float:
    """How much more matmul work a pass does in haiku's order of the outer product mean than the engine's."""
    return (MAIN_BLOCKS * (opm_flops(L, S, C_M, False) - opm_flops(L, S, C_M))
            + EXTRA_BLOCKS * (opm_flops(L, E, C_E, False) - opm_flops(L, E, C_E)))


def main_block_flops(L: int, S: int) -> float:
    return msa_block_flops(L, S, C_M, 256, False) + pair_stack_flops(L, C_Z, 128, 128, 4)


def extra_block_flops(L: int, E: int) -> float:
    return msa_block_flops(L, E, C_E, 64, True) + pair_stack_flops(L, C_Z, 128, 128, 4)


def template_flops(L: int, T: int) -> float:
    """T templates through the template pair stack, and the pointwise attention over them."""
    if T <= 0:
        return 0.0
    stack = TEMPLATE_BLOCKS * pair_stack_flops(L, C_T, 64, 64, 2)
    embed = 2 * L * L * 88 * C_T
    pointwise = 2 * L * L * (C_Z * 64 + 2 * C_T * 64 + 64 * C_Z) + 4 * L * L * T * 64
    return T * (stack + embed) + pointwise


def heads_flops(L: int) -> float:
    """Structure module (8 IPA layers' pair terms) and the pair heads (distogram, PAE)."""
    ipa = 8 * 2 * L * L * C_Z * 12 * 2
    return ipa + 2 * 2 * L * L * C_Z * 64


def pass_flops(L: int, S: int = 1, E: int = 1, T: int = 0, main_blocks: int = MAIN_BLOCKS,
               extra_blocks: int = EXTRA_BLOCKS) -> float:
    """Matmul FLOPs of one pass: L residues, S MSA rows (templates' rows included), E extra rows, T templates."""
    return (main_blocks * main_block_flops(L, S) + extra_blocks * extra_block_flops(L, E)
            + template_flops(L, T) + heads_flops(L))


def pair_blocks(T: int = 0, main_blocks: int = MAIN_BLOCKS, extra_blocks: int = EXTRA_BLOCKS) -> int:
    """Blocks that update a pair representation (their elementwise work grows as L²)."""
    return main_blocks + extra_blocks + TEMPLATE_BLOCKS * max(T, 0)
