"""The per-head attention bias that the pair gives MSA row attention and triangle attention.

``einsum("qkc,ch->hqk", LayerNorm(pair), feat_2d_weights)`` (Suppl. Alg. 7
line 3, Alg. 13/14 line 3). The LayerNorm runs row slice by row slice
(:func:`.chunking.row_slices`), so the normalised pair, one more pair-sized
tensor (two when the pair is read transposed: LayerNorm first copies it
contiguous), is never whole: at 1,000 residues in fp32 that made triangle
attention the pass's peak (3.0 pair-sized tensors against 2.0).
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import row_slices
from .primitives import LayerNorm, derived


def pair_bias(module: nn.Module, norm: LayerNorm, pair_act: torch.Tensor,
              feat_2d_weights: torch.Tensor) -> torch.Tensor:
    """pair_act [q, k, c] (any strides) -> bias [h, q, k], contiguous: the layout the attention kernel takes
    as a mask without copying. Each slice is computed as ``W·LN(rows)ᵀ``
    (:meth:`.LayerNorm.forward_projected`), so its [h, rows, k] block comes out in that layout."""
    nq, nk, c = pair_act.shape
    w_t = derived(module, "feat_2d", lambda w: w.t().contiguous(), feat_2d_weights)
    bias = None
    for start, rows in row_slices(pair_act):
        block = norm.forward_projected(pair_act.narrow(0, start, rows), w_t).view(-1, rows, nk)
        if bias is None:
            if rows == nq:
                return block
            bias = block.new_empty((block.shape[0], nq, nk))
        bias[:, start:start + rows] = block
    return bias
