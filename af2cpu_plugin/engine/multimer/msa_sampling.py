"""AlphaFold-Multimer's in-model MSA features (Evans et al. 2021, Sec. 2.1; ``modules_multimer``).

Each pass samples cluster centres from the raw MSA, BERT-masks them, assigns
every other sequence to its nearest centre and builds the 49 MSA features
(one-hot, deletions, cluster profile, cluster deletion mean) and the 25
extra-MSA ones. The random numbers come from :mod:`.rng` (JAX's, so both
backends draw the same sample); the arithmetic here follows haiku's
functions line by line, in float32, as ColabFold computes them even in bf16.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import torch

from .rng import NUM_BERT_CLASSES, SampleDraws

#: MSA token classes: 20 amino acids, X, gap (the raw MSA's alphabet).
NUM_MSA_CLASSES = 22


def _one_hot(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(index.long(), num_classes).to(torch.float32)


def msa_profile(msa: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
    """Per-residue amino-acid frequencies over the whole raw MSA [L, 22] (``make_msa_profile``)."""
    mask = msa_mask[:, :, None]
    return (mask * _one_hot(msa, NUM_MSA_CLASSES)).sum(0) / (mask.sum(0) + 1e-10)


def sample_msa(batch: Mapping[str, torch.Tensor], order: torch.Tensor, num_msa: int) -> Dict[str, torch.Tensor]:
    """Rows ``order[:num_msa]`` become the clusters, the rest the extra MSA (``sample_msa``)."""
    selected, extra = order[:num_msa], order[num_msa:]
    out = {}
    for key in ("msa", "deletion_matrix", "msa_mask"):
        out[key] = batch[key][selected]
        out["extra_" + key] = batch[key][extra]
    return out


def mask_msa(msa: torch.Tensor, msa_mask: torch.Tensor, profile: torch.Tensor, draws: SampleDraws,
             config) -> torch.Tensor:
    """BERT masking of the cluster centres (``make_masked_msa``; config ``masked_msa``).

    A position is replaced with probability ``replace_fraction``: by a uniform
    amino acid, the profile's, the same one or the mask token, in the
    proportions of ``uniform_prob``, ``profile_prob``, ``same_prob`` and the rest.
    """
    random_aa = torch.tensor([0.05] * 20 + [0.0, 0.0], dtype=torch.float32)
    probs = (config.uniform_prob * random_aa + config.profile_prob * profile
             + config.same_prob * _one_hot(msa, NUM_MSA_CLASSES))
    mask_prob = 1.0 - config.profile_prob - config.same_prob - config.uniform_prob
    assert mask_prob >= 0.0
    probs = torch.nn.functional.pad(probs, (0, 1), value=mask_prob)
    logits = torch.log(probs + 1e-6)
    replacement = torch.argmax(logits + draws.bert_gumbel, dim=-1)  # gumbel_max_sample
    masked = (draws.mask_uniform < config.replace_fraction).to(torch.float32) * msa_mask
    bert_msa = torch.where(masked.bool(), replacement, msa.long())
    return bert_msa * msa_mask.long()


def nearest_neighbor_clusters(msa, msa_mask, deletion_matrix, extra_msa, extra_msa_mask, extra_deletion_matrix):
    """Each extra sequence joins its nearest cluster centre (``nearest_neighbor_clusters``).

    Returns the cluster profile [S, L, 23] and the cluster deletion mean [S, L].
    Agreement counts identical residues, not gaps or mask tokens; haiku's
    softmax over the centres (temperature 1e-3) splits a tie evenly.
    """
    weights = torch.tensor([1.0] * 21 + [0.0] + [0.0], dtype=torch.float32)
    msa_one_hot = msa_mask[:, :, None] * _one_hot(msa, NUM_BERT_CLASSES)  # [S, L, 23]
    extra_one_hot = extra_msa_mask[:, :, None] * _one_hot(extra_msa, NUM_BERT_CLASSES)  # [E, L, 23]
    num_clusters, num_res, _ = msa_one_hot.shape
    flat_extra = extra_one_hot.reshape(extra_one_hot.shape[0], -1)
    agreement = (weights * msa_one_hot).reshape(num_clusters, -1) @ flat_extra.T  # [S, E]
    assignment = torch.softmax(1e3 * agreement, dim=0)
    assignment = assignment * (msa_mask @ extra_msa_mask.T)
    count = assignment.sum(-1) + 1.0  # the centre itself
    profile = (assignment @ flat_extra).reshape(num_clusters, num_res, -1) + msa_one_hot
    profile = profile / count[:, None, None]
    deletion_mean = assignment @ (extra_msa_mask * extra_deletion_matrix) + deletion_matrix
    deletion_mean = deletion_mean / count[:, None]
    return profile, deletion_mean


def deletion_value(deletion_matrix: torch.Tensor) -> torch.Tensor:
    """Deletion counts squashed to [0, 1): arctan(d / 3) * 2 / pi."""
    return torch.atan(deletion_matrix / 3.0) * (2.0 / math.pi)


def msa_features(msa, deletion_matrix, cluster_profile, cluster_deletion_mean) -> torch.Tensor:
    """The 49 cluster features [S, L, 49] (``create_msa_feat``)."""
    return torch.cat([
        _one_hot(msa, NUM_BERT_CLASSES),
        torch.clamp(deletion_matrix, 0.0, 1.0)[..., None],
        deletion_value(deletion_matrix)[..., None],
        cluster_profile,
        deletion_value(cluster_deletion_mean)[..., None],
    ], dim=-1)


def sample_msa_features(batch: Mapping[str, torch.Tensor], draws: SampleDraws, config) -> Dict[str, torch.Tensor]:
    """One pass's MSA inputs from the raw MSA (the start of ``EmbeddingsAndEvoformer``).

    ``batch`` holds the raw ``msa`` [N, L] (int), ``deletion_matrix`` and
    ``msa_mask`` [N, L]; ``config`` is ``embeddings_and_evoformer``. Returns
    ``msa_feat`` [S, L, 49], ``msa_mask`` [S, L], and the extra MSA's
    ``extra_msa`` [E, L] (int), ``extra_has_deletion``, ``extra_deletion_value``
    and ``extra_msa_mask`` [E, L] (E at most ``num_extra_msa``).
    """
    raw = {"msa": batch["msa"].long(), "deletion_matrix": batch["deletion_matrix"].float(),
           "msa_mask": batch["msa_mask"].float()}
    profile = msa_profile(raw["msa"], raw["msa_mask"])
    s = sample_msa(raw, draws.order, config.num_msa)
    msa = mask_msa(s["msa"], s["msa_mask"], profile, draws, config.masked_msa)
    if config.use_cluster_profile:
        cluster_profile, cluster_deletion_mean = nearest_neighbor_clusters(
            msa, s["msa_mask"], s["deletion_matrix"], s["extra_msa"], s["extra_msa_mask"],
            s["extra_deletion_matrix"])
    else:
        cluster_profile, cluster_deletion_mean = _one_hot(msa, NUM_BERT_CLASSES), s["deletion_matrix"]
    extra = slice(0, config.num_extra_msa)
    extra_deletions = s["extra_deletion_matrix"][extra]
    return {
        "msa_feat": msa_features(msa, s["deletion_matrix"], cluster_profile, cluster_deletion_mean),
        "msa_mask": s["msa_mask"],
        "extra_msa": s["extra_msa"][extra],
        "extra_has_deletion": torch.clamp(extra_deletions, 0.0, 1.0),
        "extra_deletion_value": deletion_value(extra_deletions),
        "extra_msa_mask": s["extra_msa_mask"][extra],
    }
