"""MSA -> pair update by the masked mean outer product (modules.OuterProductMean).

Jumper et al. (2021) Suppl. Alg. 10 "OuterProductMean".
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import subbatched
from .primitives import LayerNorm, Linear, derived, empty_param, linear_2d, matmul_2d

# Added to the count of sequences where both residues are present (haiku's epsilon).
NORM_EPSILON = 1e-3


def _sum_over_sequences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``, a contraction over the MSA's sequences (5,120 of them in the extra MSA stack).

    bf16 takes oneDNN's GEMM (about twice MKL's speed here). fp32 keeps
    ``torch.matmul`` (MKL): oneDNN's summation order over that long axis, fed
    back through recycling, moved the deep-MSA parity case (bench/parity.py)
    from 0.09 to 0.35 Å after 3 recycles, 4x JAX's own 1-ulp floor.
    """
    return torch.matmul(a, b) if a.dtype == torch.float32 else matmul_2d(a, b)


class OuterProductMean(nn.Module):
    """Suppl. Alg. 10: ``mean_s(a_si ⊗ b_sj)`` projected to the pair channels.

    Haiku divides by ``1e-3 + sum_s mask_si * mask_sj`` after the output
    projection and bias (so the bias is divided too). Work is split over the
    left residue axis ``i`` with :func:`subbatched`.

    For shallow MSAs (single sequence, few templates rows) the right
    activations are projected through ``output_w`` first,
    ``sum_s sum_a l[s,i,a] (sum_b r[s,j,b] W[a,b,:])``: the same sum in
    another order, with S·c·c_z instead of c·c·c_z multiply-adds per pair
    (32x fewer for one sequence). Only in reduced precision: fp32 keeps
    haiku's order, since it is the parity reference and a different rounding
    order, fed back through recycling, moves a chaotic random-weight model by
    more than the fp32 parity bars.
    """

    def __init__(self, config, msa_channel: int, pair_channel: int) -> None:
        super().__init__()
        c = config.num_outer_channel
        self.num_outer_channel = c
        self.layer_norm_input = LayerNorm(msa_channel)
        self.left_projection = Linear(msa_channel, c)
        self.right_projection = Linear(msa_channel, c)
        self.output_w = empty_param(c, c, pair_channel)
        self.output_b = empty_param(pair_channel)

    def _chunk(self, left_t: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left_t [r_i, S, c] (rows i of the left act), right [S, R, c] -> [r_i, R, c_z], bias added."""
        ri, s, c = left_t.shape
        r = right.shape[1]
        # [r_i*c, S] @ [S, R*c] -> sum over sequences of left[s,i,a]*right[s,j,b]
        outer = _sum_over_sequences(left_t.transpose(1, 2).reshape(ri * c, s), right.reshape(s, r * c))
        outer = outer.reshape(ri, c, r, c).permute(0, 2, 1, 3).reshape(ri * r, c * c)
        return linear_2d(outer, *self._w_flat(outer.dtype)).reshape(ri, r, -1)

    def _w_flat(self, dtype: torch.dtype):
        """output_w as [c_z, c*c] and the bias in ``dtype``, for linear_2d."""
        return derived(self, f"w_flat@{dtype}",
                       lambda w, b: (w.reshape(-1, w.shape[-1]).t().to(dtype).contiguous(), b.to(dtype)),
                       self.output_w, self.output_b)

    def _projected_first(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left, right [S, R, c] -> [R, R, c_z] (bias added), projecting ``right`` through output_w first."""
        s, r, c = right.shape

        def build(w, b):  # output_w [a, b, z] -> [b, a*z]
            return w.permute(1, 0, 2).reshape(c, -1).to(right.dtype).contiguous(), b.to(right.dtype)

        w_b, bias = derived(self, f"w_right@{right.dtype}", build, self.output_w, self.output_b)
        cz = bias.shape[0]
        projected = matmul_2d(right.reshape(s * r, c), w_b)  # [S*R, a*z]
        projected = projected.view(s, r, c, cz).permute(0, 2, 1, 3).reshape(s * c, r * cz)
        left_rows = left.permute(1, 0, 2).reshape(r, s * c)
        return matmul_2d(left_rows, projected).view(r, r, cz).add_(bias)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [R, R, c_z]."""
        act = self.layer_norm_input(msa_act)
        mask = msa_mask.to(act.dtype)[..., None]  # [S, R, 1]
        left = mask * self.left_projection(act)
        right = mask * self.right_projection(act)
        s, r, c = right.shape
        cz = self.output_b.shape[0]
        fewer_flops = s * c * cz < c * c * cz + s * c * c  # S < 43 at AF2's widths
        if fewer_flops and act.dtype != torch.float32:
            out = self._projected_first(left, right)
        else:
            # Per row i, the [R, c*c] outer products exist twice (as computed, then permuted).
            outer_row_bytes = 2 * r * c * c * right.element_size()
            out = subbatched(self._chunk, [left.transpose(0, 1)], [right], temp_row_bytes=outer_row_bytes)
        m = msa_mask.to(torch.float32)
        norm = torch.matmul(m.t(), m)[..., None]  # [R, R, 1]: sequences where i and j are both present
        # In bf16 the division gives the fp32 update (the residual stream's dtype).
        return out.div_(NORM_EPSILON + norm) if out.dtype == norm.dtype else out / (NORM_EPSILON + norm)
