"""One recycling pass of the AlphaFold2 monomer model (Suppl. Alg. 2).

Mirrors ColabFold's ``AlphaFoldIteration_noE``: the trunk, the structure
module and the heads, with haiku's root scope ``alphafold/alphafold_iteration``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

from .heads import (DistogramHead, ExperimentallyResolvedHead, MaskedMsaHead,
                    PredictedAlignedErrorHead, PredictedLDDTHead)
from .structure import StructureModule
from .trunk import EmbeddingsAndEvoformer


class AlphaFoldIteration(nn.Module):
    """Trunk + structure module + heads for one pass; configured by ColabFold's ``config.model``.

    Every AF2 monomer params file holds the distogram, masked-MSA, pLDDT and
    experimentally-resolved heads, so they are always built (and bound);
    ColabFold zeroes a head's weight to skip it, so a head runs only when its
    weight is non-zero. The PAE head exists only in ``_ptm`` files, whose
    config gives it a non-zero weight.
    """

    def __init__(self, model_config) -> None:
        super().__init__()
        self.config = model_config
        evo = model_config.embeddings_and_evoformer
        heads = model_config.heads
        self.evoformer = self.make_trunk(model_config)
        self.structure_module = self.make_structure_module(model_config)
        self.distogram_head = DistogramHead(heads.distogram, evo.pair_channel)
        self.masked_msa_head = MaskedMsaHead(self.masked_msa_classes(model_config), evo.msa_channel)
        self.predicted_lddt_head = PredictedLDDTHead(heads.predicted_lddt, heads.structure_module.num_channel)
        self.experimentally_resolved_head = ExperimentallyResolvedHead(heads.experimentally_resolved,
                                                                       evo.seq_channel)
        if heads.predicted_aligned_error.weight:
            self.predicted_aligned_error_head = PredictedAlignedErrorHead(heads.predicted_aligned_error,
                                                                          evo.pair_channel)
        else:
            self.predicted_aligned_error_head = None

    # The parts AlphaFold-Multimer replaces (engine.multimer.model overrides these three).
    def make_trunk(self, model_config) -> nn.Module:
        return EmbeddingsAndEvoformer(model_config.embeddings_and_evoformer, model_config.global_config)

    def make_structure_module(self, model_config) -> nn.Module:
        evo = model_config.embeddings_and_evoformer
        return StructureModule(model_config.heads.structure_module, evo.seq_channel, evo.pair_channel)

    def masked_msa_classes(self, model_config) -> int:
        return model_config.heads.masked_msa.num_output

    @staticmethod
    def structure_activations(structure: Mapping[str, Any]) -> torch.Tensor:
        """The structure module's final single activations (what the pLDDT head reads)."""
        return structure["representations"]["structure_module"]

    def _wanted(self, name: str) -> bool:
        return bool(self.config.heads[name].weight)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        reps = self.evoformer(batch)
        ret: Dict[str, Any] = {}
        if self._wanted("distogram"):
            ret["distogram"] = self.distogram_head(reps["pair"])
        if self._wanted("experimentally_resolved"):
            ret["experimentally_resolved"] = self.experimentally_resolved_head(reps["single"])
        if self._wanted("masked_msa"):
            ret["masked_msa"] = self.masked_msa_head(reps["msa"])
        structure = self.structure_module(reps["single"], reps["pair"], batch)
        reps["structure_module"] = self.structure_activations(structure)
        # At inference haiku's StructureModule returns only these (folding.py, compute_loss=False).
        ret["structure_module"] = {k: structure[k] for k in ("final_atom_positions", "final_atom_mask")}
        if self._wanted("predicted_lddt"):
            ret["predicted_lddt"] = self.predicted_lddt_head(reps["structure_module"])
        if self.predicted_aligned_error_head is not None:
            pae = self.predicted_aligned_error_head(reps["pair"])
            if "asym_id" in batch:
                pae["asym_id"] = batch["asym_id"]
            ret["predicted_aligned_error"] = pae
        ret["representations"] = reps
        return ret
