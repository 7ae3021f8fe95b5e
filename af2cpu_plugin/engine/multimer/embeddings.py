"""AlphaFold-Multimer's relative chain encoding (Evans et al. 2021, Sec. 2.2 "Positional encoding").

``modules_multimer.EmbeddingsAndEvoformer._relative_encoding`` with
``use_chain_relative``: residue offsets within a chain (one extra bin for
"other chain"), a same-entity bit, and the symmetry-copy offset between
chains of one entity (one extra bin for "other entity"), one-hot and
projected to the pair channels.
"""

from __future__ import annotations

import torch
from torch import nn

from ..params import Scopeless
from ..primitives import Linear


class _RelativeEncodingScope(nn.Module):
    """Haiku's ``~_relative_encoding`` scope (a method's scope inside ``evoformer``)."""

    def __init__(self, num_features: int, pair_channel: int) -> None:
        super().__init__()
        self.position_activations = Linear(num_features, pair_channel)


class RelativeChainEncoding(Scopeless):
    """Suppl. Alg. 4 "relpos" for complexes, as AlphaFold-Multimer extends it.

    ``max_relative_idx`` clips residue offsets, ``max_relative_chain`` the
    ``sym_id`` offsets. Inputs are per residue: ``residue_index``,
    ``asym_id`` (chain), ``entity_id`` (distinct sequence), ``sym_id`` (copy
    of the entity).
    """

    SCOPE = "~_relative_encoding"

    def __init__(self, max_relative_idx: int, max_relative_chain: int, pair_channel: int,
                 use_chain_relative: bool = True) -> None:
        super().__init__()
        self.max_relative_idx = max_relative_idx
        self.max_relative_chain = max_relative_chain
        self.use_chain_relative = use_chain_relative
        num_pos = 2 * max_relative_idx + (2 if use_chain_relative else 1)
        num_features = num_pos + (1 + 2 * max_relative_chain + 2 if use_chain_relative else 0)
        self.add_module(self.SCOPE, _RelativeEncodingScope(num_features, pair_channel))

    @property
    def linear(self) -> Linear:
        return getattr(self, self.SCOPE).position_activations

    def forward(self, residue_index: torch.Tensor, asym_id: torch.Tensor, entity_id: torch.Tensor,
                sym_id: torch.Tensor) -> torch.Tensor:
        return self.rows(residue_index, residue_index, asym_id, asym_id, entity_id, entity_id, sym_id, sym_id)

    def rows(self, index_i, index_j, asym_i, asym_j, entity_i, entity_j, sym_i, sym_j) -> torch.Tensor:
        """The encoding's rows for residues ``i`` (a slice) against all residues ``j``."""
        r, c = self.max_relative_idx, self.max_relative_chain
        w = self.linear.weights
        offset = torch.clamp((index_i[:, None] - index_j[None, :]).long() + r, 0, 2 * r)
        if not self.use_chain_relative:
            return w[offset] + self.linear.bias
        # The one-hot rows are gathered rather than multiplied (the same numbers, no [L, L, 73] tensor).
        same_chain = asym_i[:, None] == asym_j[None, :]
        offset = torch.where(same_chain, offset, torch.full_like(offset, 2 * r + 1))
        same_entity = entity_i[:, None] == entity_j[None, :]
        num_pos = 2 * r + 2
        rel_chain = torch.clamp((sym_i[:, None] - sym_j[None, :]).long() + c, 0, 2 * c)
        rel_chain = torch.where(same_entity, rel_chain, torch.full_like(rel_chain, 2 * c + 1))
        act = w[offset] + same_entity.to(w.dtype)[..., None] * w[num_pos]
        act = act + w[num_pos + 1 + rel_chain]
        return act + self.linear.bias
