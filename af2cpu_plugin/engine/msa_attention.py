"""Attention over the MSA representation (rows biased by the pair, columns).

Mirrors modules.MSARowAttentionWithPairBias, modules.MSAColumnAttention and
modules.MSAColumnGlobalAttention: Suppl. Alg. 7, 8 and 19.
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import subbatched
from .pair_bias import pair_bias
from .primitives import Attention, GlobalAttention, LayerNorm, empty_param, mask_to_bias


class MSARowAttentionWithPairBias(nn.Module):
    """Suppl. Alg. 7 "MSARowAttentionWithPairBias"."""

    def __init__(self, config, msa_channel: int, pair_channel: int) -> None:
        super().__init__()
        assert config.orientation == "per_row"
        self.query_norm = LayerNorm(msa_channel)
        self.feat_2d_norm = LayerNorm(pair_channel)
        self.feat_2d_weights = empty_param(pair_channel, config.num_head)
        self.attention = Attention.from_config(config, msa_channel)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor, pair_act: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R], pair_act [R, R, c_z] -> update [S, R, c_m]."""
        return self._update(msa_act, msa_mask, pair_act, into=None)

    def add_update_(self, msa_act: torch.Tensor, msa_mask: torch.Tensor, pair_act: torch.Tensor) -> torch.Tensor:
        """``msa_act += self(msa_act, msa_mask, pair_act)`` (a residual update), slice by slice."""
        return self._update(msa_act, msa_mask, pair_act, into=msa_act)

    def _update(self, msa_act, msa_mask, pair_act, into):
        bias = mask_to_bias(msa_mask)[:, None, None, :]
        nonbatched_bias = pair_bias(self, self.feat_2d_norm, pair_act, self.feat_2d_weights)
        return subbatched(self._attend, [msa_act, bias], [nonbatched_bias], add_into=into)

    def _attend(self, msa_act, bias, nonbatched_bias):
        x = self.query_norm(msa_act)  # per slice: LayerNorm is per row
        return self.attention(x, x, bias, nonbatched_bias)


class MSAColumnAttention(nn.Module):
    """Suppl. Alg. 8 "MSAColumnAttention"."""

    def __init__(self, config, msa_channel: int) -> None:
        super().__init__()
        assert config.orientation == "per_column"
        self.query_norm = LayerNorm(msa_channel)
        self.attention = Attention.from_config(config, msa_channel)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [S, R, c_m]."""
        return self._update(msa_act, msa_mask, into=None)

    def add_update_(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """``msa_act += self(msa_act, msa_mask)`` (a residual update), slice by slice."""
        return self._update(msa_act, msa_mask, into=msa_act)

    def _update(self, msa_act, msa_mask, into):
        # Columns attend: work on the transposed views (the update is added back through one).
        bias = mask_to_bias(msa_mask.transpose(0, 1))[:, None, None, :]
        out = subbatched(self._attend, [msa_act.transpose(0, 1), bias],
                         add_into=None if into is None else into.transpose(0, 1))
        return out.transpose(0, 1)

    def _attend(self, msa_act, bias):
        x = self.query_norm(msa_act)  # per slice: LayerNorm is per row
        return self.attention(x, x, bias)


class MSAColumnGlobalAttention(nn.Module):
    """Suppl. Alg. 19 "MSAColumnGlobalAttention" (extra MSA stack)."""

    def __init__(self, config, msa_channel: int) -> None:
        super().__init__()
        assert config.orientation == "per_column"
        self.query_norm = LayerNorm(msa_channel)
        self.attention = GlobalAttention(
            msa_channel, msa_channel, msa_channel, config.num_head, gating=config.gating
        )

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [S, R, c_m]."""
        return self._update(msa_act, msa_mask, into=None)

    def add_update_(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """``msa_act += self(msa_act, msa_mask)`` (a residual update), slice by slice."""
        return self._update(msa_act, msa_mask, into=msa_act)

    def _update(self, msa_act, msa_mask, into):
        q_mask = msa_mask.transpose(0, 1)[..., None]  # in the compute dtype per slice, in _attend
        out = subbatched(self._attend, [msa_act.transpose(0, 1), q_mask],
                         add_into=None if into is None else into.transpose(0, 1))
        return out.transpose(0, 1)

    def _attend(self, msa_act, q_mask):
        x = self.query_norm(msa_act)  # per slice: LayerNorm is per row
        return self.attention(x, x, q_mask.to(x.dtype))
