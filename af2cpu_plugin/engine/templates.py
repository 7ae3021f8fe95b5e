"""Template embedding (modules.TemplatePairStack, SingleTemplateEmbedding, TemplateEmbedding).

Jumper et al. (2021) Suppl. Alg. 2 "Inference" lines 7-13, Suppl. Alg. 16
"TemplatePairStack" and Suppl. Alg. 17 "TemplatePointwiseAttention". The
template rows of the MSA (lines 7-8) live in :class:`TemplateTorsionEmbedder`;
their features come from :mod:`.template_features`.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .embeddings import distogram_one_hot
from .params import LayerStack, Scopeless
from .primitives import Attention, KeyStream, LayerNorm, Linear, mask_to_bias
from .template_features import _one_hot, backbone_unit_vectors, template_single_features
from .transition import Transition
from .triangle_attention import TriangleAttention
from .triangle_multiplication import TriangleMultiplication

# 22 one-hot aatype + 14 torsion (sin, cos) + 14 alternative + 7 torsion masks.
TEMPLATE_SINGLE_FEAT_DIM = 57
NUM_AATYPE = 22


class TemplatePairBlock(nn.Module):
    """One block of Suppl. Alg. 16: triangle attention (start, end), triangle
    multiplication (outgoing, incoming), pair transition; each a residual update."""

    def __init__(self, config, num_channel: int) -> None:
        super().__init__()
        self.triangle_attention_starting_node = TriangleAttention(config.triangle_attention_starting_node,
                                                                  num_channel)
        self.triangle_attention_ending_node = TriangleAttention(config.triangle_attention_ending_node, num_channel)
        self.triangle_multiplication_outgoing = TriangleMultiplication(config.triangle_multiplication_outgoing,
                                                                       num_channel)
        self.triangle_multiplication_incoming = TriangleMultiplication(config.triangle_multiplication_incoming,
                                                                       num_channel)
        self.pair_transition = Transition(config.pair_transition, num_channel)

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """pair [R, R, c_t], pair_mask [R, R] -> pair, updated in place (pair = pair + module(pair) per line)."""
        self.triangle_attention_starting_node.add_update_(pair, pair_mask)
        self.triangle_attention_ending_node.add_update_(pair, pair_mask)
        self.triangle_multiplication_outgoing.add_update_(pair, pair_mask)
        self.triangle_multiplication_incoming.add_update_(pair, pair_mask)
        self.pair_transition.add_update_(pair, pair_mask)
        return pair


class TemplatePairStack(nn.Module):
    """Suppl. Alg. 16 "TemplatePairStack": ``num_block`` blocks on one template's pair features.

    Haiku scope ``template_pair_stack``; its ``layer_stack`` adds the scope
    ``__layer_stack_no_state`` under which the blocks' params are stacked.
    """

    def __init__(self, config, num_channel: int) -> None:
        super().__init__()
        self.add_module("__layer_stack_no_state",
                        LayerStack(TemplatePairBlock(config, num_channel) for _ in range(config.num_block)))

    @property
    def blocks(self) -> LayerStack:
        return getattr(self, "__layer_stack_no_state")

    def forward(self, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """pair [R, R, c_t], pair_mask [R, R] -> pair [R, R, c_t], updated in place: the caller's
        embedding is not needed after the stack, and a copy per block was half a pair tensor more."""
        for block in self.blocks:
            block(pair, pair_mask)
        return pair


class SingleTemplateEmbedding(nn.Module):
    """Suppl. Alg. 2 lines 9 + 11: one template's pair features -> [R, R, c_t].

    Features: distogram of the template pseudo-β (``dgram_features``), the
    pseudo-β pair mask, the aatype one-hots of j and of i, the unit vectors
    between backbone frames (zero unless ``use_template_unit_vector``) and the
    backbone (N, CA, C) pair mask; everything is zeroed outside the backbone
    mask, embedded (``embedding2d``), run through the pair stack with the
    residue pair mask, and layer-normed (``output_layer_norm``).
    Haiku scope ``single_template_embedding``; ``config`` is ``model.embeddings_and_evoformer.template``.
    """

    def __init__(self, config, num_channel: int) -> None:
        super().__init__()
        self.dgram_config = config.dgram_features
        self.use_template_unit_vector = bool(config.use_template_unit_vector)
        num_features = self.dgram_config.num_bins + 1 + 2 * NUM_AATYPE + 3 + 1
        self.embedding2d = Linear(num_features, num_channel)
        self.template_pair_stack = TemplatePairStack(config.template_pair_stack, num_channel)
        self.output_layer_norm = LayerNorm(num_channel)

    def pair_features(self, aatype, pseudo_beta, pseudo_beta_mask, all_atom_positions, all_atom_masks):
        """The [R, R, 88] input of ``embedding2d`` (already multiplied by the backbone mask)."""
        num_res = aatype.shape[0]
        dtype = pseudo_beta.dtype
        c = self.dgram_config
        pb_mask_2d = pseudo_beta_mask[:, None] * pseudo_beta_mask[None, :]
        dgram = distogram_one_hot(pseudo_beta, c.num_bins, c.min_bin, c.max_bin)
        one_hot = _one_hot(aatype, NUM_AATYPE, dtype)
        unit_vector, bb_mask_2d = backbone_unit_vectors(all_atom_positions, all_atom_masks)
        if not self.use_template_unit_vector:
            unit_vector = torch.zeros_like(unit_vector)
        act = torch.cat([
            dgram,
            pb_mask_2d[..., None],
            one_hot[None, :, :].expand(num_res, -1, -1),  # aatype of j
            one_hot[:, None, :].expand(-1, num_res, -1),  # aatype of i
            unit_vector,
            bb_mask_2d[..., None],
        ], dim=-1)
        # Haiku masks by the backbone mask (not the pseudo-β one) here.
        return act * bb_mask_2d[..., None]

    def forward(self, aatype: torch.Tensor, pseudo_beta: torch.Tensor, pseudo_beta_mask: torch.Tensor,
                all_atom_positions: torch.Tensor, all_atom_masks: torch.Tensor,
                pair_mask: torch.Tensor) -> torch.Tensor:
        """One template: aatype [R], pseudo_beta [R, 3], pseudo_beta_mask [R],
        all_atom_positions [R, 37, 3], all_atom_masks [R, 37]; pair_mask [R, R]
        (residue padding, not the template's coverage) -> [R, R, c_t]."""
        act = self.pair_features(aatype, pseudo_beta, pseudo_beta_mask, all_atom_positions, all_atom_masks)
        act = self.embedding2d(act)
        act = self.template_pair_stack(act, pair_mask)
        return self.output_layer_norm(act)


class TemplateEmbedding(nn.Module):
    """Suppl. Alg. 2 lines 9-12 and Suppl. Alg. 17 "TemplatePointwiseAttention".

    Each template is embedded on its own with shared weights (haiku maps
    ``single_template_embedding`` over the templates); then each pair
    position of the query attends over the templates, keys masked by
    ``template_mask``. Haiku scope ``template_embedding``.

    Templates whose ``template_mask`` is 0 are skipped: their attention
    weight is exactly 0 in AF2 (a -1e9 logit), so leaving them out gives the
    same numbers and saves their pair stack (ColabFold pads to 4 templates).
    With no template at all the embedding is 0, as haiku's.
    """

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        stack = config.template_pair_stack
        num_channel = stack.triangle_attention_ending_node.value_dim
        self.single_template_embedding = SingleTemplateEmbedding(config, num_channel)
        self.attention = Attention.from_config(config.attention, pair_channel, num_channel)

    def forward(self, query_embedding: torch.Tensor, template_aatype: torch.Tensor,
                template_pseudo_beta: torch.Tensor, template_pseudo_beta_mask: torch.Tensor,
                template_all_atom_positions: torch.Tensor, template_all_atom_masks: torch.Tensor,
                template_mask: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """query_embedding [R, R, c_z]; per-template features with a leading
        template axis T (see :class:`SingleTemplateEmbedding`); template_mask [T];
        pair_mask [R, R] -> template pair embedding [R, R, c_z]."""
        num_res, _, c_z = query_embedding.shape
        template_mask = template_mask.to(query_embedding.dtype)
        present = [t for t in range(template_mask.shape[0]) if float(template_mask[t]) != 0.0]
        if not present:
            return torch.zeros_like(query_embedding)
        # Each pair position attends over the templates ([R*R, 1, c_z] queries, one key per template); each
        # template is attended as soon as it is embedded, then dropped (KeyStream), never all held at once.
        attention = KeyStream(self.attention, query_embedding.reshape(num_res * num_res, 1, c_z))
        for t in present:
            one = self.single_template_embedding(
                template_aatype[t], template_pseudo_beta[t], template_pseudo_beta_mask[t],
                template_all_atom_positions[t], template_all_atom_masks[t], pair_mask)
            bias = mask_to_bias(template_mask[t : t + 1])[None, None, None, :]
            attention.add(one.reshape(num_res * num_res, 1, -1), bias)
            del one
        return attention.result().reshape(num_res, num_res, c_z)


class TemplateTorsionEmbedder(Scopeless):
    """Suppl. Alg. 2 lines 7-8: template rows for the MSA from aatype and torsion angles.

    ``template_single_embedding`` -> ReLU -> ``template_projection``; the row
    mask is the psi-angle mask (it only needs one residue's backbone). The
    params sit flat in the ``evoformer`` scope, as in haiku.
    ``placeholder_for_undefined`` is haiku's ``not global_config.zero_init``.
    """

    def __init__(self, msa_channel: int, placeholder_for_undefined: bool = False) -> None:
        super().__init__()
        self.placeholder_for_undefined = placeholder_for_undefined
        self.template_single_embedding = Linear(TEMPLATE_SINGLE_FEAT_DIM, msa_channel)
        self.template_projection = Linear(msa_channel, msa_channel)

    def forward(self, template_aatype: torch.Tensor, template_all_atom_positions: torch.Tensor,
                template_all_atom_masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[T, R], [T, R, 37, 3], [T, R, 37] -> (MSA rows [T, R, c_m], their mask [T, R])."""
        features, psi_mask = template_single_features(template_aatype, template_all_atom_positions,
                                                      template_all_atom_masks, self.placeholder_for_undefined)
        act = self.template_projection(self.template_single_embedding.forward_relu(features))
        return act, psi_mask
