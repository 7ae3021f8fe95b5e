"""Embeddings and the Evoformer trunk (Suppl. Alg. 2 "Inference", lines 5-18)."""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from .embeddings import ExtraMsaEmbedder, InputEmbedder, RecyclingEmbedder, RelativePositionEncoding, add_relpos_
from .evoformer import EvoformerStack
from .policy import trunk_precision
from .primitives import Linear, residual_add_
from .templates import TemplateEmbedding, TemplateTorsionEmbedder

# Feature widths fixed by AlphaFold's input pipeline.
TARGET_FEAT_DIM = 22
MSA_FEAT_DIM = 49


class EmbeddingsAndEvoformer(nn.Module):
    """Embeds features, recycles the previous pass, runs the extra-MSA stack
    (Suppl. Alg. 18) and the Evoformer (Alg. 6), and projects the single
    representation. Haiku scope: ``evoformer``.

    With ``config.template.enabled`` the templates' pair embedding (Suppl. Alg.
    2 lines 9-13) is added to the pair representation before the extra-MSA
    stack and, with ``embed_torsion_angles``, their torsion-angle rows (lines
    7-8) are appended to the MSA for the Evoformer and cropped off the
    ``msa`` output. ``global_config`` (``model.global_config``) is read for
    ``zero_init``, which haiku uses to pick the torsion placeholder
    (ColabFold's configs: ``zero_init=True``, no placeholder).
    """

    def __init__(self, config, global_config=None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.input_embedder = InputEmbedder(TARGET_FEAT_DIM, MSA_FEAT_DIM, c.msa_channel, c.pair_channel,
                                            RelativePositionEncoding(c.max_relative_feature, c.pair_channel))
        self.recycling_embedder = RecyclingEmbedder(c.prev_pos, c.msa_channel, c.pair_channel)
        if c.template.enabled:
            self.template_embedding = TemplateEmbedding(c.template, c.pair_channel)
            if c.template.embed_torsion_angles:
                zero_init = True if global_config is None else bool(global_config.zero_init)
                self.template_torsion_embedder = TemplateTorsionEmbedder(
                    c.msa_channel, placeholder_for_undefined=not zero_init)
        self.extra_msa_embedder = ExtraMsaEmbedder(c.extra_msa_channel)
        self.extra_msa_stack = EvoformerStack(c.evoformer, c.extra_msa_stack_num_block,
                                              c.extra_msa_channel, c.pair_channel, is_extra_msa=True)
        self.evoformer_iteration = EvoformerStack(c.evoformer, c.evoformer_num_block,
                                                  c.msa_channel, c.pair_channel, is_extra_msa=False)
        self.single_activations = Linear(c.msa_channel, c.seq_channel)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        c = self.config
        msa, pair = self.input_embedder(batch["target_feat"], batch["msa_feat"])
        if c.recycle_pos or c.recycle_features:
            # ColabFold's configs always set both; the haiku code gates each.
            assert c.recycle_pos and c.recycle_features, "partial recycling configs are not supported"
            msa, pair = self.recycling_embedder(msa, pair, batch["aatype"], batch["prev_pos"],
                                                batch["prev_msa_first_row"], batch["prev_pair"])
        if c.max_relative_feature:
            add_relpos_(pair, self.input_embedder.relpos, batch["residue_index"], batch.get("asym_id"))

        seq_mask = batch["seq_mask"]
        pair_mask = seq_mask[:, None] * seq_mask[None, :]

        extra = self.extra_msa_embedder(batch["extra_msa"], batch["extra_has_deletion"],
                                        batch["extra_deletion_value"])
        msa_mask = batch["msa_mask"]
        if c.template.enabled and c.template.embed_torsion_angles:
            template_rows, template_row_mask = self.template_torsion_embedder(
                batch["template_aatype"], batch["template_all_atom_positions"], batch["template_all_atom_masks"])
            msa = torch.cat([msa, template_rows], dim=0)
            msa_mask = torch.cat([msa_mask, template_row_mask.to(msa_mask.dtype)], dim=0)

        # ColabFold's bf16 region (utils.bfloat16_context): fp32 unless the policy says bf16.
        # The residual streams (msa, extra, pair) stay fp32, the modules' updates added into them,
        # except the pair where the policy stores it in bf16 to fit memory (policy.pair_dtype).
        # (The template pair stack's own stream starts from a bf16 embedding and stays bf16, as in ColabFold.)
        with trunk_precision():
            if c.template.enabled:
                residual_add_(pair, self.template_embedding(
                    pair, batch["template_aatype"], batch["template_pseudo_beta"], batch["template_pseudo_beta_mask"],
                    batch["template_all_atom_positions"], batch["template_all_atom_masks"], batch["template_mask"],
                    pair_mask))
            _, pair = self.extra_msa_stack(extra, pair, batch["extra_msa_mask"], pair_mask)
            del extra
            msa, pair = self.evoformer_iteration(msa, pair, msa_mask, pair_mask)
        num_sequences = batch["msa_feat"].shape[0]
        return {
            "single": self.single_activations(msa[0]),
            "pair": pair,
            "msa": msa[:num_sequences],
            "msa_first_row": msa[0],
        }
