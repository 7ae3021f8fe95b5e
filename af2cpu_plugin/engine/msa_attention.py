"""Attention over the MSA representation (rows biased by the pair, columns).

Mirrors modules.MSARowAttentionWithPairBias, modules.MSAColumnAttention and
modules.MSAColumnGlobalAttention: Suppl. Alg. 7, 8 and 19.
"""

from __future__ import annotations

import torch
from torch import nn

from .chunking import subbatched
from .primitives import Attention, GlobalAttention, LayerNorm, empty_param, mask_to_bias, pair_bias


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
        bias = mask_to_bias(msa_mask)[:, None, None, :]
        msa_act = self.query_norm(msa_act)
        pair_act = self.feat_2d_norm(pair_act)
        nonbatched_bias = pair_bias(self, pair_act, self.feat_2d_weights)
        return subbatched(
            lambda x, b, nb: self.attention(x, x, b, nb), [msa_act, bias], [nonbatched_bias]
        )


class MSAColumnAttention(nn.Module):
    """Suppl. Alg. 8 "MSAColumnAttention"."""

    def __init__(self, config, msa_channel: int) -> None:
        super().__init__()
        assert config.orientation == "per_column"
        self.query_norm = LayerNorm(msa_channel)
        self.attention = Attention.from_config(config, msa_channel)

    def forward(self, msa_act: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """msa_act [S, R, c_m], msa_mask [S, R] -> update [S, R, c_m]."""
        msa_act = msa_act.transpose(0, 1)
        msa_mask = msa_mask.transpose(0, 1)
        bias = mask_to_bias(msa_mask)[:, None, None, :]
        msa_act = self.query_norm(msa_act)
        out = subbatched(lambda x, b: self.attention(x, x, b), [msa_act, bias])
        return out.transpose(0, 1)


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
        msa_act = msa_act.transpose(0, 1)
        msa_mask = msa_mask.transpose(0, 1)
        msa_act = self.query_norm(msa_act)
        q_mask = msa_mask.to(msa_act.dtype)[..., None]
        out = subbatched(lambda x, m: self.attention(x, x, m), [msa_act, q_mask])
        return out.transpose(0, 1)
