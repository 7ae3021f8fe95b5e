"""One recycling pass of AlphaFold-Multimer (``modules_multimer.AlphaFoldIteration``).

The heads and their order are the monomer's (:class:`engine.model.AlphaFoldIteration`);
the multimer model swaps in its own trunk (in-model MSA sampling, chain
encoding, per-chain templates), its own structure module (``folding_multimer``)
and a masked-MSA head over 22 classes.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..model import AlphaFoldIteration
from .structure import StructureModule
from .trunk import EmbeddingsAndEvoformer

#: haiku's MaskedMsaHead in multimer_mode: len(residue_constants.restypes_with_x_and_gap).
MASKED_MSA_CLASSES = 22


class MultimerIteration(AlphaFoldIteration):
    """Trunk + structure module + heads of AlphaFold-Multimer v1/v2/v3, haiku scope ``alphafold/alphafold_iteration``.

    ``forward(batch)`` takes ColabFold's raw multimer features (``msa``,
    ``deletion_matrix``, ``msa_mask``, ``cluster_bias_mask``, ``asym_id``,
    ``entity_id``, ``sym_id``, ``residue_index``, ``seq_mask``, ``aatype``,
    ``template_*``), the recycled ``prev_*`` and the pass's ``random_key``.
    The v1/v2/v3 differences are all in ColabFold's config (MSA depths, recycles)
    and in the params' triangle-multiplication layout, which the converter fuses.
    """

    def make_trunk(self, model_config) -> nn.Module:
        return EmbeddingsAndEvoformer(model_config.embeddings_and_evoformer)

    def make_structure_module(self, model_config) -> nn.Module:
        evo = model_config.embeddings_and_evoformer
        return StructureModule(model_config.heads.structure_module, evo.seq_channel, evo.pair_channel)

    def masked_msa_classes(self, model_config) -> int:
        return MASKED_MSA_CLASSES

    @staticmethod
    def structure_activations(structure: Mapping[str, Any]) -> torch.Tensor:
        return structure["act"]
