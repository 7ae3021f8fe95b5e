"""One Evoformer block and a stack of them (modules.EvoformerIteration).

Jumper et al. (2021) Suppl. Alg. 6 "EvoformerStack" lines 2-10 and, with
``is_extra_msa``, Suppl. Alg. 18 "ExtraMsaStack" (column *global* attention).
Dropout is the identity at inference, so each haiku ``dropout_wrapper`` call is
``act + module(...)``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .msa_attention import MSAColumnAttention, MSAColumnGlobalAttention, MSARowAttentionWithPairBias
from .outer_product_mean import OuterProductMean
from .params import LayerStack
from . import progress
from .transition import Transition
from .triangle_attention import TriangleAttention
from .triangle_multiplication import TriangleMultiplication


class EvoformerIteration(nn.Module):
    """Suppl. Alg. 6 lines 2-10 (Suppl. Alg. 18 when ``is_extra_msa``).

    ``config`` is ``model.embeddings_and_evoformer.evoformer`` of ColabFold's
    model config; the extra MSA stack uses the same config with its own MSA
    channel count.
    """

    def __init__(self, config, msa_channel: int, pair_channel: int, is_extra_msa: bool) -> None:
        super().__init__()
        self.is_extra_msa = is_extra_msa
        self.outer_product_mean_first = bool(config.outer_product_mean.first)
        self.outer_product_mean = OuterProductMean(config.outer_product_mean, msa_channel, pair_channel)
        self.msa_row_attention_with_pair_bias = MSARowAttentionWithPairBias(
            config.msa_row_attention_with_pair_bias, msa_channel, pair_channel
        )
        if is_extra_msa:
            self.msa_column_global_attention = MSAColumnGlobalAttention(config.msa_column_attention, msa_channel)
        else:
            self.msa_column_attention = MSAColumnAttention(config.msa_column_attention, msa_channel)
        self.msa_transition = Transition(config.msa_transition, msa_channel)
        self.triangle_multiplication_outgoing = TriangleMultiplication(
            config.triangle_multiplication_outgoing, pair_channel
        )
        self.triangle_multiplication_incoming = TriangleMultiplication(
            config.triangle_multiplication_incoming, pair_channel
        )
        self.triangle_attention_starting_node = TriangleAttention(
            config.triangle_attention_starting_node, pair_channel
        )
        self.triangle_attention_ending_node = TriangleAttention(config.triangle_attention_ending_node, pair_channel)
        self.pair_transition = Transition(config.pair_transition, pair_channel)

    def forward(
        self, msa: torch.Tensor, pair: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """msa [S, R, c_m], pair [R, R, c_z], msa_mask [S, R], pair_mask [R, R] -> (msa, pair), updated in place."""
        # Each line is ``act = act + module(act)`` (a dropout_wrapper at
        # inference), made in place: ``msa`` and ``pair`` are the caller's own
        # (fresh from the embedders) and are handed over, so no second copy
        # of either is ever live (the extra MSA alone is 3.9 GiB at 3,000
        # residues). Most updates are added slice by slice as the module
        # computes them, so no whole update tensor is made either.
        if self.outer_product_mean_first:
            self.outer_product_mean.add_update_(pair, msa, msa_mask)
        self.msa_row_attention_with_pair_bias.add_update_(msa, msa_mask, pair)
        if self.is_extra_msa:
            self.msa_column_global_attention.add_update_(msa, msa_mask)
        else:
            self.msa_column_attention.add_update_(msa, msa_mask)
        self.msa_transition.add_update_(msa, msa_mask)
        if not self.outer_product_mean_first:
            self.outer_product_mean.add_update_(pair, msa, msa_mask)
        self.triangle_multiplication_outgoing.add_update_(pair, pair_mask)
        self.triangle_multiplication_incoming.add_update_(pair, pair_mask)
        self.triangle_attention_starting_node.add_update_(pair, pair_mask)
        self.triangle_attention_ending_node.add_update_(pair, pair_mask)
        self.pair_transition.add_update_(pair, pair_mask)
        return msa, pair


class EvoformerStack(LayerStack):
    """``num_block`` Evoformer iterations whose params haiku stacks on axis 0.

    Register it in the parent under haiku's scope name,
    ``self.evoformer_iteration = EvoformerStack(...)`` (48 blocks) or
    ``self.extra_msa_stack = EvoformerStack(..., is_extra_msa=True)`` (4 blocks):
    being a :class:`LayerStack` itself, it adds no scope level of its own.
    """

    def __init__(
        self, config, num_block: int, msa_channel: int, pair_channel: int, is_extra_msa: bool
    ) -> None:
        super().__init__(
            EvoformerIteration(config, msa_channel, pair_channel, is_extra_msa) for _ in range(num_block)
        )
        # Progress counts the main stack's blocks only (48 a pass in every model): the
        # extra-MSA stack is this class too, but its few blocks are not what a pass is made of.
        self.reports_progress = not is_extra_msa

    def forward(
        self, msa: torch.Tensor, pair: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        for block in self:
            msa, pair = block(msa, pair, msa_mask, pair_mask)
            if self.reports_progress:
                progress.block_done()
        return msa, pair
