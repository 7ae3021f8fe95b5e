"""Triangle self-attention around a pair-representation node (modules.TriangleAttention).

Jumper et al. (2021) Suppl. Alg. 13 "TriangleAttentionStartingNode" (orientation
``per_row``) and Suppl. Alg. 14 "TriangleAttentionEndingNode" (``per_column``).
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import subbatched
from .pair_bias import pair_bias
from .primitives import Attention, LayerNorm, empty_param, mask_to_bias


class TriangleAttention(nn.Module):
    """Suppl. Alg. 13 / 14: rows (or columns) of the pair attend, biased by the pair."""

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        assert config.orientation in ("per_row", "per_column")
        self.per_column = config.orientation == "per_column"
        self.query_norm = LayerNorm(pair_channel)
        self.feat_2d_weights = empty_param(pair_channel, config.num_head)
        self.attention = Attention.from_config(config, pair_channel)

    def forward(self, pair_act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """pair_act [R, R, c_z], pair_mask [R, R] -> update [R, R, c_z]."""
        return self._update(pair_act, pair_mask, into=None)

    def add_update_(self, pair_act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """``pair_act += self(pair_act, pair_mask)`` (a residual update), slice by slice."""
        return self._update(pair_act, pair_mask, into=pair_act)

    def _update(self, pair_act, pair_mask, into):
        if self.per_column:  # attend along columns: work on the transposed views
            pair_act, pair_mask = pair_act.transpose(0, 1), pair_mask.transpose(0, 1)
            into = None if into is None else into.transpose(0, 1)
        bias = mask_to_bias(pair_mask)[:, None, None, :]
        # Made from the whole pair before any row is updated; the normalised pair is never whole
        # (see .pair_bias): each slice is normalised again where it attends.
        nonbatched_bias = pair_bias(self, self.query_norm, pair_act, self.feat_2d_weights)
        out = subbatched(self._attend, [pair_act, bias], [nonbatched_bias], add_into=into)
        return out.transpose(0, 1) if self.per_column else out

    def _attend(self, pair_act, bias, nonbatched_bias):
        x = self.query_norm(pair_act)  # per slice: LayerNorm is per row
        return self.attention(x, x, bias, nonbatched_bias)
