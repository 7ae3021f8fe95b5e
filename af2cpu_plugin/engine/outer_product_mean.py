"""MSA -> pair update by the masked mean outer product (modules.OuterProductMean).

Jumper et al. (2021) Suppl. Alg. 10 "OuterProductMean".
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import subbatched
from .primitives import LayerNorm, Linear, derived, empty_param, linear_2d

# Added to the count of sequences where both residues are present (haiku's epsilon).
NORM_EPSILON = 1e-3


class OuterProductMean(nn.Module):
    """Suppl. Alg. 10: ``mean_s(a_si ⊗ b_sj)`` projected to the pair channels.

    Haiku divides by ``1e-3 + sum_s mask_si * mask_sj`` after the output
    projection and bias (so the bias is divided too). Work is split over the
    left residue axis ``i`` with :func:`subbatched`.
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
        outer = torch.matmul(left_t.transpose(1, 2).reshape(ri * c, s), right.reshape(s, r * c))
        outer = outer.reshape(ri, c, r, c).permute(0, 2, 1, 3).reshape(ri * r, c * c)
        return linear_2d(outer, *self._w_flat()).reshape(ri, r, -1)

    def _w_flat(self):
        """output_w as [c_z, c*c] and the bias, for linear_2d."""
        return derived(self, "w_flat", lambda w, b: (w.reshape(-1, w.shape[-1]).t().contiguous(), b),
                       self.output_w, self.output_b)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [R, R, c_z]."""
        mask = msa_mask.to(msa_act.dtype)[..., None]  # [S, R, 1]
        act = self.layer_norm_input(msa_act)
        left = mask * self.left_projection(act)
        right = mask * self.right_projection(act)
        s, r, c = right.shape
        # Per row i, the [R, c*c] outer products exist twice (as computed, then permuted).
        outer_row_bytes = 2 * r * c * c * right.element_size()
        out = subbatched(self._chunk, [left.transpose(0, 1)], [right], temp_row_bytes=outer_row_bytes)
        m = mask[..., 0]
        norm = torch.matmul(m.t(), m)[..., None]  # [R, R, 1]: sequences where i and j are both present
        return out.div_(NORM_EPSILON + norm)
