"""AlphaFold-Multimer template embedding (modules_multimer.TemplateEmbedding,
SingleTemplateEmbedding, TemplateEmbeddingIteration, template_embedding_1d).

Evans et al. (2021), AlphaFold-Multimer, Suppl. 2.4 (after Jumper et al.
(2021) Suppl. Alg. 2 lines 7-13 and Suppl. Alg. 16 "TemplatePairStack"), as
ColabFold's multimer v3 model runs it:

- each template's pair features (masked pseudo-β distogram, aatype of i and
  of j, backbone unit vectors, the masks, and the layer-normed query pair
  embedding) are embedded by a sum of one Linear per feature, run through the
  template pair stack and layer-normed;
- the templates' embeddings are averaged (no pointwise attention, no template
  mask: padded templates count), passed through a ReLU and projected to the
  pair width (``output_linear``);
- the template rows of the MSA come from the aatype and the chi angles.

Features come from :mod:`.template_features`; the learned modules are the
monomer's (:class:`TriangleMultiplication` (fused layout), :class:`TriangleAttention`,
:class:`Transition`), in the multimer's block order.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..chunking import subbatched
from ..params import LayerStack, Scopeless
from ..primitives import LayerNorm, Linear
from ..transition import Transition
from ..triangle_attention import TriangleAttention
from ..triangle_multiplication import TriangleMultiplication
from .template_features import (NUM_AATYPE, TEMPLATE_SINGLE_FEAT_DIM, colabfold_unit_vectors, one_hot,
                                pseudo_beta_and_mask, template_single_features)


class TemplateEmbeddingIteration(nn.Module):
    """One block of the multimer template pair stack (Suppl. Alg. 16 with the
    multimer's order): triangle multiplication (outgoing, incoming), triangle
    attention (starting, ending node), pair transition; each a residual update.

    Haiku scope ``template_embedding_iteration``; ``config`` is ``template.template_pair_stack``.
    """

    def __init__(self, config, num_channel: int) -> None:
        super().__init__()
        self.triangle_multiplication_outgoing = TriangleMultiplication(config.triangle_multiplication_outgoing,
                                                                       num_channel)
        self.triangle_multiplication_incoming = TriangleMultiplication(config.triangle_multiplication_incoming,
                                                                       num_channel)
        self.triangle_attention_starting_node = TriangleAttention(config.triangle_attention_starting_node,
                                                                  num_channel)
        self.triangle_attention_ending_node = TriangleAttention(config.triangle_attention_ending_node, num_channel)
        self.pair_transition = Transition(config.pair_transition, num_channel)

    def forward(self, act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """act [R, R, c_t], pair_mask [R, R] -> act (the caller's tensor is not changed)."""
        return self.update_(act.clone(), pair_mask)

    def update_(self, act: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """As :meth:`forward`, updating ``act`` in place."""
        self.triangle_multiplication_outgoing.add_update_(act, pair_mask)
        self.triangle_multiplication_incoming.add_update_(act, pair_mask)
        self.triangle_attention_starting_node.add_update_(act, pair_mask)
        self.triangle_attention_ending_node.add_update_(act, pair_mask)
        self.pair_transition.add_update_(act, pair_mask)
        return act


class SingleTemplateEmbedding(nn.Module):
    """One template's pair embedding [R, R, c_t].

    Nine Linears, one per feature, summed in haiku's order
    (``template_pair_embedding_0..8``): distogram of the pseudo-β (masked by
    the pseudo-β pair mask), that mask, the aatype one-hot of j and of i, the
    x, y, z of the backbone unit vectors (masked by the backbone pair mask),
    that mask, and the layer-normed query pair embedding. Both pair masks
    include the multichain mask (no geometry between chains). Features with no
    channel axis go through Linears with 0 input dims (weights ``[c_t]``).
    Then ``num_block`` iterations (``template_embedding_iteration``, a layer
    stack) with the padding mask, and ``output_layer_norm``.

    Haiku scope ``single_template_embedding``; ``config`` is ``model.embeddings_and_evoformer.template``.
    """

    def __init__(self, config, query_channel: int) -> None:
        super().__init__()
        c = config.num_channels
        self.dgram_config = config.dgram_features
        self.query_embedding_norm = LayerNorm(query_channel)
        inputs = [self.dgram_config.num_bins, (), NUM_AATYPE, NUM_AATYPE, (), (), (), (), query_channel]
        for i, num_input in enumerate(inputs):
            setattr(self, f"template_pair_embedding_{i}", Linear(num_input, c))
        self.template_embedding_iteration = LayerStack(
            TemplateEmbeddingIteration(config.template_pair_stack, c)
            for _ in range(config.template_pair_stack.num_block))
        self.output_layer_norm = LayerNorm(c)

    def _linear(self, i: int) -> Linear:
        return getattr(self, f"template_pair_embedding_{i}")

    def query_term(self, query_embedding: torch.Tensor) -> torch.Tensor:
        """``template_pair_embedding_8(query_embedding_norm(query))`` [R, R, c_t]: the same for every
        template, so :class:`TemplateEmbedding` computes it once."""
        return subbatched(lambda q: self._linear(8)(self.query_embedding_norm(q)), [query_embedding])

    def embed(self, query_term: torch.Tensor, template_aatype: torch.Tensor,
              template_all_atom_positions: torch.Tensor, template_all_atom_mask: torch.Tensor,
              padding_mask_2d: torch.Tensor, multichain_mask_2d: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given :meth:`query_term`."""
        act = self._construct_input(query_term, template_aatype, template_all_atom_positions,
                                    template_all_atom_mask, multichain_mask_2d)
        for block in self.template_embedding_iteration:
            act = block.update_(act, padding_mask_2d)
        return self.output_layer_norm(act)

    def forward(self, query_embedding: torch.Tensor, template_aatype: torch.Tensor,
                template_all_atom_positions: torch.Tensor, template_all_atom_mask: torch.Tensor,
                padding_mask_2d: torch.Tensor, multichain_mask_2d: torch.Tensor) -> torch.Tensor:
        """query_embedding [R, R, c_z]; one template: aatype [R], all_atom_positions [R, 37, 3],
        all_atom_mask [R, 37]; padding_mask_2d [R, R]; multichain_mask_2d [R, R] (1 within a chain)
        -> [R, R, c_t]."""
        return self.embed(self.query_term(query_embedding), template_aatype, template_all_atom_positions,
                          template_all_atom_mask, padding_mask_2d, multichain_mask_2d)

    def _construct_input(self, query_term, aatype, positions, atom_mask, multichain_mask_2d) -> torch.Tensor:
        """The sum of the nine feature Linears [R, R, c_t] (haiku's ``construct_input``), in row slices."""
        positions = positions.to(torch.float32)
        atom_mask = atom_mask.to(torch.float32)
        multichain = multichain_mask_2d.to(torch.float32)
        pb, pb_mask = pseudo_beta_and_mask(aatype, positions, atom_mask)
        pb_mask_2d = pb_mask[:, None] * pb_mask[None, :] * multichain
        unit_vector, backbone_mask_2d = colabfold_unit_vectors(positions, atom_mask, multichain)
        aatype_one_hot = one_hot(aatype, NUM_AATYPE)
        aatype_j = self._linear(2)(aatype_one_hot)[None]  # [1, R, c_t]: the same for every row
        c = self.dgram_config

        def rows(pb_i, pb_mask_2d_i, aatype_i, unit_vector_i, backbone_mask_2d_i, query_i, pb_all, aatype_j):
            dgram = distogram_one_hot_rows(pb_i, pb_all, c.num_bins, c.min_bin, c.max_bin)
            dgram = dgram * pb_mask_2d_i[..., None]
            act = self._linear(0)(dgram)
            act += self._linear(1)(pb_mask_2d_i)
            act += aatype_j
            act += self._linear(3)(aatype_i)[:, None]
            for k in range(3):
                act += self._linear(4 + k)(unit_vector_i[..., k].contiguous())
            act += self._linear(7)(backbone_mask_2d_i)
            act += query_i
            return act

        return subbatched(rows, [pb, pb_mask_2d, aatype_one_hot, unit_vector, backbone_mask_2d, query_term],
                          [pb, aatype_j], temp_row_bytes=4 * pb.shape[0] * c.num_bins)


def distogram_one_hot_rows(positions_i: torch.Tensor, positions: torch.Tensor, num_bins: int, min_bin: float,
                           max_bin: float) -> torch.Tensor:
    """Rows ``i`` of :func:`..embeddings.distogram_one_hot` ([I, 3], [R, 3] -> [I, R, num_bins]),
    as ``modules.dgram_from_positions``."""
    lower = torch.linspace(min_bin, max_bin, num_bins, dtype=torch.float32) ** 2
    upper = torch.cat([lower[1:], lower.new_tensor([1e8])])
    dist2 = ((positions_i[:, None, :] - positions[None, :, :]) ** 2).sum(-1, keepdim=True)
    return ((dist2 > lower) & (dist2 < upper)).to(torch.float32)


class TemplateEmbedding(nn.Module):
    """The multimer's template pair embedding [R, R, c_z].

    Templates are embedded one at a time with shared weights and summed, as
    haiku's ``hk.scan`` does (only one template's embedding is alive at a
    time); the sum is divided by the number of templates, padded ones
    included (haiku has no template mask here), then ReLU and ``output_linear``.
    Consecutive identical templates (ColabFold's empty padding templates) are
    embedded once and added once per copy: the same numbers, in haiku's order.

    Haiku scope ``template_embedding``; ``config`` is ``model.embeddings_and_evoformer.template``.
    """

    def __init__(self, config, pair_channel: int) -> None:
        super().__init__()
        self.single_template_embedding = SingleTemplateEmbedding(config, pair_channel)
        self.output_linear = Linear(config.num_channels, pair_channel)

    def forward(self, query_embedding: torch.Tensor, template_aatype: torch.Tensor,
                template_all_atom_positions: torch.Tensor, template_all_atom_mask: torch.Tensor,
                padding_mask_2d: torch.Tensor, multichain_mask_2d: torch.Tensor) -> torch.Tensor:
        """query_embedding [R, R, c_z]; template_aatype [T, R]; template_all_atom_positions
        [T, R, 37, 3]; template_all_atom_mask [T, R, 37]; padding_mask_2d [R, R];
        multichain_mask_2d [R, R] (bool or float, 1 within a chain) -> [R, R, c_z]."""
        num_templates = template_aatype.shape[0]
        if num_templates == 0:
            raise ValueError("the multimer template embedding needs at least one (possibly empty) template")
        single = self.single_template_embedding
        query_term = single.query_term(query_embedding)
        summed = None
        t = 0
        while t < num_templates:
            copies = 1
            while t + copies < num_templates and _same_template(template_aatype, template_all_atom_positions,
                                                                 template_all_atom_mask, t, t + copies):
                copies += 1
            embedding = single.embed(query_term, template_aatype[t], template_all_atom_positions[t],
                                     template_all_atom_mask[t], padding_mask_2d, multichain_mask_2d)
            for _ in range(copies):
                if summed is None:
                    summed = embedding.clone() if copies > 1 else embedding
                else:
                    summed += embedding
            del embedding
            t += copies
        del query_term
        summed /= num_templates
        return self.output_linear(torch.relu_(summed))


def _same_template(aatype, positions, mask, s: int, t: int) -> bool:
    return (torch.equal(aatype[s], aatype[t]) and torch.equal(mask[s], mask[t])
            and torch.equal(positions[s], positions[t]))


class TemplateSingleEmbedding(Scopeless):
    """The multimer's template rows of the MSA (``template_embedding_1d``).

    ``template_single_embedding`` -> ReLU -> ``template_projection`` on the
    aatype one-hot and the masked sin/cos of the chi angles; the row mask is
    the chi1 mask (as haiku: residues without chi1 are masked). The params sit
    flat in the ``evoformer`` scope, as in haiku.
    """

    def __init__(self, msa_channel: int) -> None:
        super().__init__()
        self.template_single_embedding = Linear(TEMPLATE_SINGLE_FEAT_DIM, msa_channel)
        self.template_projection = Linear(msa_channel, msa_channel)

    def forward(self, template_aatype: torch.Tensor, template_all_atom_positions: torch.Tensor,
                template_all_atom_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[T, R], [T, R, 37, 3], [T, R, 37] -> (MSA rows [T, R, c_m], their mask [T, R])."""
        features, mask = template_single_features(template_aatype, template_all_atom_positions,
                                                  template_all_atom_mask)
        act = self.template_projection(self.template_single_embedding.forward_relu(features))
        return act, mask
