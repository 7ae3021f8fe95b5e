"""The random draws of one multimer pass, exactly as ColabFold's JAX model makes them.

AlphaFold-Multimer samples its MSA inside the model (``modules_multimer``):
which sequences become cluster centres, which positions are BERT-masked and
what they are replaced with. For the same ``--random-seed`` both backends
must draw the same sample, so the draws come from JAX itself, from the same
keys, through ColabFold's own noise functions (``gumbel_noise`` and the
padding-consistent uniform). They are small ([sequences], [clusters,
residues], [clusters, residues, 23]); everything computed from them is torch
(:mod:`.msa_sampling`).

The key chain, from ``RunModel.predict`` down:

- ``predict`` splits ``PRNGKey(random_seed)`` once per pass; the pass key is
  haiku's ``apply`` rng;
- ``modules_multimer.AlphaFold`` takes ``hk.next_rng_key()`` (haiku's PRNG
  sequence, so it is taken with haiku here too);
- ``AlphaFoldIteration``'s ensemble scan splits it in two (one ensemble at
  inference) and hands the second to ``EmbeddingsAndEvoformer``;
- that splits in three: ``sample_msa`` gets the second, ``make_masked_msa``
  the third, which it splits in three again (mask positions, Gumbel noise).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np
import torch

#: Classes of the BERT replacement distribution: 20 amino acids, X, gap, mask token.
NUM_BERT_CLASSES = 23


class SampleDraws(NamedTuple):
    """The random numbers of one pass's MSA sample (torch, CPU)."""

    order: torch.Tensor  # [N] int64: row indices, cluster centres first (gumbel_argsort_sample_idx)
    mask_uniform: torch.Tensor  # [S, L] float32: a position is BERT-masked where < replace_fraction
    bert_gumbel: torch.Tensor  # [S, L, 23] float32: Gumbel noise for the replacement class


def pass_keys(random_seed: int, num_passes: int) -> list:
    """The JAX key of each recycling pass, as ``RunModel.predict`` splits them (raw uint32[2] arrays)."""
    import jax

    key = jax.random.PRNGKey(random_seed)
    keys = []
    for _ in range(num_passes):
        key, sub_key = jax.random.split(key)
        keys.append(np.asarray(sub_key))
    return keys


def draw(pass_key: np.ndarray, msa_mask: np.ndarray, cluster_bias_mask: np.ndarray, num_msa: int) -> SampleDraws:
    """The draws of one pass from its key: the sample order and the BERT noise for ``num_msa`` clusters."""
    num_seq, num_res = msa_mask.shape
    num_clusters = min(int(num_msa), num_seq)
    fn = _jitted_draws(num_clusters)
    order, uniform, gumbel = fn(np.asarray(pass_key, np.uint32), np.asarray(msa_mask, np.float32),
                                np.asarray(cluster_bias_mask, np.float32))
    return SampleDraws(order=torch.from_numpy(np.asarray(order, np.int64)),
                       mask_uniform=torch.from_numpy(np.array(uniform, np.float32)),
                       bert_gumbel=torch.from_numpy(np.array(gumbel, np.float32)))


@functools.lru_cache(maxsize=None)
def _first_haiku_key():
    """``hk.next_rng_key()`` inside ``apply(params, rng)``: haiku's PRNG sequence, taken by haiku."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import haiku as hk

    return hk.transform(lambda: hk.next_rng_key()).apply


@functools.lru_cache(maxsize=None)
def _jitted_draws(num_clusters: int):
    """One jitted function per cluster count (shapes are static to XLA, as in ColabFold's jit)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from alphafold.model import modules_multimer, utils

    first_key = _first_haiku_key()
    uniform = utils.padding_consistent_rng(jax.random.uniform)

    def fn(pass_key, msa_mask, cluster_bias_mask):
        model_key = first_key({}, pass_key)
        _, embed_key = jax.random.split(model_key)  # AlphaFoldIteration's ensemble split
        _, sample_key, mask_key = jax.random.split(embed_key, 3)
        # sample_msa: row logits (empty rows last, cluster_bias_mask rows first)
        logits = (jnp.clip(jnp.sum(msa_mask, axis=-1), 0., 1.) - 1.) * 1e6 + cluster_bias_mask * 1e6
        order = modules_multimer.gumbel_argsort_sample_idx(sample_key, logits)
        # make_masked_msa on the sampled rows
        _, mask_subkey, gumbel_subkey = jax.random.split(mask_key, 3)
        shape = (num_clusters, msa_mask.shape[1])
        mask_uniform = uniform(mask_subkey, shape)
        bert_gumbel = modules_multimer.gumbel_noise(gumbel_subkey, shape + (NUM_BERT_CLASSES,))
        return order, mask_uniform, bert_gumbel

    return jax.jit(fn)
