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
# The projected right activations are a whole-call temporary of S·R·c·c_z values
# (16 KiB per residue and sequence in fp32); above this size the MSA takes haiku's
# order, so the temporary stays small beside the pair (one sequence in fp32 fits
# up to 16,384 residues, 8 sequences up to 2,048).
PROJECTED_FIRST_MAX_BYTES = 256 * 2**20


def projects_first(num_seq: int, num_res: int, c: int, c_z: int, itemsize: int = 4) -> bool:
    """Whether an MSA of ``num_seq`` rows goes through output_w first: fewer multiply-adds
    (S·c·c_z + S·c·c against c·c·c_z per pair; S < 43 at AF2's widths) and a small enough temporary."""
    fewer = num_seq * c * c_z < c * c * c_z + num_seq * c * c
    return fewer and num_seq * num_res * c * c_z * itemsize <= PROJECTED_FIRST_MAX_BYTES


def _sum_over_sequences(left_t: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left_t [r_i, S, c], right [S, R, c] -> [r_i*R, c*c]: ``sum_s left[s,i,a] * right[s,j,b]`` at row (i, j),
    column (a, b), the layout the output projection takes.

    A contraction over the MSA's sequences (5,120 of them in the extra MSA
    stack): one GEMM, whose [r_i*c, R*c] result is permuted. (Shallow MSAs,
    single sequence included, never come here: they project first.)
    """
    ri, s, c = left_t.shape
    r = right.shape[1]
    # [r_i*c, S] @ [S, R*c]; in fp32 matmul_2d sums the sequences in blocks (MKL's accuracy, twice its speed).
    outer = matmul_2d(left_t.transpose(1, 2).reshape(ri * c, s), right.reshape(s, r * c))
    return outer.reshape(ri, c, r, c).permute(0, 2, 1, 3).reshape(ri * r, c * c)


class OuterProductMean(nn.Module):
    """Suppl. Alg. 10: ``mean_s(a_si ⊗ b_sj)`` projected to the pair channels.

    Haiku divides by ``1e-3 + sum_s mask_si * mask_sj`` after the output
    projection and bias (so the bias is divided too). Work is split over the
    left residue axis ``i`` with :func:`subbatched`.

    For shallow MSAs (:func:`projects_first`: single sequence, a few
    template rows, up to 42 sequences at moderate lengths) the right activations are projected
    through ``output_w`` first, ``sum_s sum_a l[s,i,a] (sum_b r[s,j,b]
    W[a,b,:])``: the same sum in another order, with S·c·c_z instead of
    c·c·c_z multiply-adds per pair (32x fewer for one sequence: at 200
    residues, single sequence, the projection was 5.5 s of a 43 s fp32 pass on
    a Zen 3). In fp32 too: each output is then two sums of 32 products instead
    of one of 1,024, no less accurate. ``bench/parity.py --case single130
    --floor-samples 10`` (Zen 3) puts it inside JAX's own noise: first pass
    0.0028 Å max, and after 3 recycles a median max over 11 inputs of 0.305 Å
    against JAX-vs-JAX's 0.319 under one-ulp nudges.
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
        outer = _sum_over_sequences(left_t, right)
        return linear_2d(outer, *self._w_flat(outer.dtype)).reshape(left_t.shape[0], right.shape[1], -1)

    def _w_flat(self, dtype: torch.dtype):
        """output_w as [c_z, c*c] and the bias in ``dtype``, for linear_2d."""
        return derived(self, f"w_flat@{dtype}",
                       lambda w, b: (w.reshape(-1, w.shape[-1]).t().to(dtype).contiguous(), b.to(dtype)),
                       self.output_w, self.output_b)

    def _projected_first(self, left_t: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left_t [r_i, S, c] (rows i of the left act), right [S, R, c] -> [r_i, R, c_z] (bias added),
        projecting ``right`` through output_w first."""
        s, r, c = right.shape

        def build(w, b):  # output_w [a, b, z] -> [b, a*z]
            return w.permute(1, 0, 2).reshape(c, -1).to(right.dtype).contiguous(), b.to(right.dtype)

        w_b, bias = derived(self, f"w_right@{right.dtype}", build, self.output_w, self.output_b)
        cz = bias.shape[0]
        projected = matmul_2d(right.reshape(s * r, c), w_b)  # [S*R, a*z]
        projected = projected.view(s, r, c, cz).permute(0, 2, 1, 3).reshape(s * c, r * cz)
        ri = left_t.shape[0]
        return matmul_2d(left_t.reshape(ri, s * c), projected).view(ri, r, cz).add_(bias)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [R, R, c_z]."""
        return self._update(msa_act, msa_mask, into=None)

    def add_update_(self, pair_act: torch.Tensor, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """``pair_act += self(msa_act, msa_mask)``, row slice by row slice: the [R, R, c_z] update is never
        whole (in bf16 it was, twice: the bf16 product and its fp32 quotient)."""
        return self._update(msa_act, msa_mask, into=pair_act)

    def _update(self, msa_act, msa_mask, into):
        act = self.layer_norm_input(msa_act)
        left = self.left_projection(act)
        right = self.right_projection(act)
        if not bool(msa_mask.all()):  # padding rows or residues (a deep MSA has none: x * 1 is x)
            mask = msa_mask.to(act.dtype)[..., None]  # [S, R, 1]
            left.mul_(mask)
            right.mul_(mask)
        s, r, c = right.shape
        cz = self.output_b.shape[0]
        m = msa_mask.to(torch.float32)
        norm = torch.matmul(m.t(), m)[..., None]  # [R, R, 1]: sequences where i and j are both present
        if projects_first(s, r, c, cz, right.element_size()):
            products, temp_row_bytes = self._projected_first, r * cz * right.element_size()
        else:
            # Per row i, the [R, c*c] outer products exist twice (as computed, then permuted).
            products, temp_row_bytes = self._chunk, 2 * r * c * c * right.element_size()

        def rows(left_t, norm_rows, right):
            out = products(left_t, right)
            # In bf16 the division gives the fp32 update (the residual stream's dtype).
            return out.div_(NORM_EPSILON + norm_rows) if out.dtype == norm_rows.dtype else out / (NORM_EPSILON + norm_rows)

        return subbatched(rows, [left.transpose(0, 1), norm], [right], temp_row_bytes=temp_row_bytes, add_into=into)
