"""AlphaFold-Multimer's embeddings and Evoformer trunk (``modules_multimer.EmbeddingsAndEvoformer``).

The same stacks as the monomer's (Suppl. Alg. 2 lines 5-18, the extra-MSA
stack and the Evoformer, with the outer product mean first as the multimer
config says); what differs is the input: the MSA is sampled and featurised
inside the model each pass (:mod:`.msa_sampling`, from the pass's random
key), the target feature is a 21-class one-hot, positions are encoded per
chain (:class:`.embeddings.RelativeChainEncoding`) and templates are
embedded per chain (:mod:`.templates`).
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from ..embeddings import ExtraMsaEmbedder, InputEmbedder, RecyclingEmbedder, add_relpos_
from ..evoformer import EvoformerStack
from ..policy import trunk_precision
from ..primitives import Linear, residual_add_
from . import rng
from .embeddings import RelativeChainEncoding
from .msa_sampling import sample_msa_features
from .templates import TemplateEmbedding, TemplateSingleEmbedding

#: One-hot amino acids + X (no gap class, unlike the monomer's 22).
TARGET_FEAT_DIM = 21
MSA_FEAT_DIM = 49


class EmbeddingsAndEvoformer(nn.Module):
    """Haiku scope ``evoformer``; ``config`` is the multimer ``model.embeddings_and_evoformer``.

    ``forward`` takes ColabFold's raw multimer features plus ``prev_*`` and
    ``random_key`` (the pass's JAX key, uint32[2] as int64) and returns the
    ``single``, ``pair``, ``msa`` and ``msa_first_row`` representations.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = c = config
        relpos = RelativeChainEncoding(c.max_relative_idx, c.max_relative_chain, c.pair_channel,
                                       use_chain_relative=c.use_chain_relative)
        self.input_embedder = InputEmbedder(TARGET_FEAT_DIM, MSA_FEAT_DIM, c.msa_channel, c.pair_channel, relpos)
        self.recycling_embedder = RecyclingEmbedder(c.prev_pos, c.msa_channel, c.pair_channel)
        if c.template.enabled:
            self.template_embedding = TemplateEmbedding(c.template, c.pair_channel)
            self.template_single_embedding = TemplateSingleEmbedding(c.msa_channel)
        self.extra_msa_embedder = ExtraMsaEmbedder(c.extra_msa_channel)
        self.extra_msa_stack = EvoformerStack(c.evoformer, c.extra_msa_stack_num_block,
                                              c.extra_msa_channel, c.pair_channel, is_extra_msa=True)
        self.evoformer_iteration = EvoformerStack(c.evoformer, c.evoformer_num_block,
                                                  c.msa_channel, c.pair_channel, is_extra_msa=False)
        self.single_activations = Linear(c.msa_channel, c.seq_channel)

    def sampled_msa(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """This pass's MSA features, drawn from ``batch['random_key']`` as ColabFold's model draws them."""
        c = self.config
        key = batch["random_key"].numpy().astype("uint32")
        draws = rng.draw(key, batch["msa_mask"].numpy(), batch["cluster_bias_mask"].numpy(), c.num_msa)
        return sample_msa_features(batch, draws, c)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        c = self.config
        sampled = self.sampled_msa(batch)
        aatype = batch["aatype"].long()
        target_feat = torch.nn.functional.one_hot(aatype, TARGET_FEAT_DIM).to(torch.float32)
        msa, pair = self.input_embedder(target_feat, sampled["msa_feat"])
        msa, pair = self.recycling_embedder(msa, pair, aatype, batch["prev_pos"], batch["prev_msa_first_row"],
                                            batch["prev_pair"])
        add_relpos_(pair, self.input_embedder.relpos, batch["residue_index"], batch["asym_id"], batch["entity_id"],
                    batch["sym_id"])
        seq_mask = batch["seq_mask"]
        pair_mask = seq_mask[:, None] * seq_mask[None, :]
        msa_mask = sampled["msa_mask"]
        num_sequences = msa.shape[0]
        if c.template.enabled:
            # Templates are per chain: their distance features never cross chains.
            multichain_mask = batch["asym_id"][:, None] == batch["asym_id"][None, :]
            template_rows, template_row_mask = self.template_single_embedding(
                batch["template_aatype"], batch["template_all_atom_positions"], batch["template_all_atom_mask"])
        extra = self.extra_msa_embedder(sampled["extra_msa"], sampled["extra_has_deletion"],
                                        sampled["extra_deletion_value"])
        # ColabFold's bf16 region, as in the monomer trunk (fp32 unless the policy says bf16).
        with trunk_precision():
            if c.template.enabled:
                residual_add_(pair, self.template_embedding(
                    pair, batch["template_aatype"], batch["template_all_atom_positions"],
                    batch["template_all_atom_mask"], pair_mask, multichain_mask))
            _, pair = self.extra_msa_stack(extra, pair, sampled["extra_msa_mask"], pair_mask)
            del extra
            if c.template.enabled:
                msa = torch.cat([msa, template_rows.to(msa.dtype)], dim=0)
                msa_mask = torch.cat([msa_mask, template_row_mask.to(msa_mask.dtype)], dim=0)
            msa, pair = self.evoformer_iteration(msa, pair, msa_mask, pair_mask)
        return {
            "single": self.single_activations(msa[0]),
            "pair": pair,
            "msa": msa[:num_sequences],
            "msa_first_row": msa[0],
        }
