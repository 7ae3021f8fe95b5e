"""The cpu backend's model runner: ColabFold's ``RunModel`` contract on the torch engine.

ColabFold builds one runner per architecture, reassigns ``runner.params`` for
each model, calls ``process_features`` (its numpy pipeline, unchanged) and
then ``predict``. ``predict`` is the same recycle loop as
``alphafold.model.model.RunModel.predict``: ``prev`` travels between passes
as float16, outputs are cast to float16, the callback sees every pass, and the
loop stops early on ``stop_at_score`` or on ``tol``. Confidence numbers
(pLDDT, PAE, pTM, ipTM, tol) come from ColabFold's own
``alphafold.common.confidence`` functions, applied row slice by row slice
(:mod:`af2cpu_plugin.confidence`: the same numbers without whole [L, L, 64] temporaries).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from alphafold.common import confidence

from . import confidence as row_sliced_confidence
from . import malloc
from .capacity import cost_model
from . import progress
from .engine.model import AlphaFoldIteration
from .engine.multimer import rng
from .engine.multimer.model import MultimerIteration
from .engine.params import bind_params
from .engine.policy import RuntimePolicy
from .engine.primitives import to_float16_

logger = logging.getLogger(__name__)



def zero_prev(num_res: int) -> Dict[str, np.ndarray]:
    """The float16 zeros RunModel.predict starts its recycle loop from (its widths: 256, 128)."""
    return {"prev_msa_first_row": np.zeros((num_res, 256), np.float16),
            "prev_pair": np.zeros((num_res, num_res, 128), np.float16),
            "prev_pos": np.zeros((num_res, 37, 3), np.float16)}


class NonFiniteOutput(ValueError):
    """A pass whose outputs hold NaN or Inf: never written out as a prediction."""


def check_finite(result: Mapping[str, Any], recycle: int, model: str) -> None:
    """Raise :class:`NonFiniteOutput` (one line: what, then the fix) if the pass's positions, pLDDT or PAE
    are not all finite. Damaged or foreign weights do this (an Inf in one array is enough); ColabFold would
    write a PDB of NaN and then fail drawing the PAE plot."""
    arrays = {"atom positions": result["structure_module"]["final_atom_positions"], "pLDDT": result.get("plddt"),
              "PAE": result.get("predicted_aligned_error")}
    bad = [name for name, a in arrays.items() if a is not None and not np.isfinite(a).all()]
    if bad:
        raise NonFiniteOutput(
            f"{model} gave NaN or Inf ({', '.join(bad)}) at recycle {recycle}; nothing of it was written"
            " — its params file is damaged or is not AlphaFold2's: download the weights again or check --data")


class UnsupportedConfig(ValueError):
    """A ColabFold configuration the cpu engine does not serve (yet)."""


def _to_torch(value: np.ndarray) -> torch.Tensor:
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if np.issubdtype(array.dtype, np.bool_):
        return torch.from_numpy(array.astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def _to_numpy(tree: Any) -> Any:
    """Tensors (nested in dicts) -> fp32 numpy, for ColabFold's confidence functions."""
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().float().numpy() if tree.is_floating_point() else tree.numpy()
    return tree


def _to_float16(tree: Any) -> Any:
    """ColabFold's RunModel casts every output leaf to float16."""
    if isinstance(tree, Mapping):
        return {k: _to_float16(v) for k, v in tree.items()}
    return np.asarray(tree, np.float16)


class CpuRunModel:
    """Drop-in for ``alphafold.model.model.RunModel`` (monomer and multimer), computed by torch on the CPU."""

    def __init__(self, config, params: Optional[Mapping] = None, is_training: bool = False,
                 extended_ptm_config: Optional[Mapping] = None, jit_kwargs: Optional[Mapping] = None,
                 policy: Optional[RuntimePolicy] = None) -> None:
        del jit_kwargs  # XLA compiler options; nothing to compile here
        if is_training:
            raise UnsupportedConfig("the cpu engine is inference-only")
        self.config = config
        self.multimer_mode = bool(config.model.global_config.multimer_mode)
        if self.multimer_mode:
            if config.model.num_ensemble_eval != 1:
                raise UnsupportedConfig("--num-ensemble > 1 is not yet served by --backend cpu")
        elif config.data.eval.num_ensemble != 1:
            raise UnsupportedConfig("--num-ensemble > 1 is not yet served by --backend cpu")
        ext = extended_ptm_config or {}
        self.config.model.calc_extended_ptm = bool(ext.get("calc_extended_ptm", False))
        self.config.model.use_probs_extended = bool(ext.get("use_probs_extended", False))
        self.policy = policy or RuntimePolicy()
        malloc.tune()  # process-wide: activation blocks up to 32 MiB are reused from the heap, not re-faulted
        model_class = MultimerIteration if self.multimer_mode else AlphaFoldIteration
        self.model = model_class(config.model).eval()
        self._params: Optional[Mapping] = None
        self._logged_plan = (1, "fp32")
        if params is not None:
            self.params = params

    @property
    def params(self) -> Optional[Mapping]:
        return self._params

    @params.setter
    def params(self, params: Mapping) -> None:
        # ColabFold swaps models by assigning params; binding is a reference swap, not a copy.
        bind_params(self.model, params)
        self._params = params

    def workload(self, feat: Mapping[str, np.ndarray]) -> cost_model.Workload:
        """What one pass over ``feat`` (one pass's features, as :meth:`forward_pass` takes them) computes."""
        evo = self.config.model.embeddings_and_evoformer
        num_res = int(np.shape(feat["aatype"])[-1])
        templates = int(np.shape(feat["template_aatype"])[-2]) if evo.template.enabled and \
            "template_aatype" in feat else 0
        if self.multimer_mode:  # the model samples its MSA: the config's budgets, or fewer rows
            rows = int(np.shape(feat["msa"])[0])
            return cost_model.Workload(num_res, min(rows, evo.num_msa), max(1, min(rows, evo.num_extra_msa)),
                                       templates, multimer=True)
        return cost_model.Workload(num_res, int(np.shape(feat["msa_feat"])[-3]),
                                   int(np.shape(feat["extra_msa"])[-2]), templates)

    def policy_for(self, feat: Mapping[str, np.ndarray]) -> RuntimePolicy:
        """The runner's policy, with the chunking and pair storage the cost model picks for this input (and
        its ``memory_limit``), where the policy does not fix ``channel_groups`` or ``pair_storage`` itself."""
        policy = self.policy
        if policy.channel_groups is not None and policy.pair_storage is not None:
            return policy
        workload = self.workload(feat)
        plan = cost_model.estimate(workload, policy.precision, policy.threads or torch.get_num_threads(),
                                   policy.memory_limit)
        groups = policy.channel_groups or plan.channel_groups
        storage = policy.pair_storage or plan.pair_storage
        if (groups, storage) != self._logged_plan:
            self._logged_plan = (groups, storage)
            limit = "" if policy.memory_limit is None else f"memory limit {policy.memory_limit / 2**30:.1f} GiB, "
            pair = "; the pair is stored in bf16 to fit" if storage == "bf16" else ""
            logger.info(f"{limit}{workload.num_res} residues: the triangle multiplications run in {groups} "
                        f"channel group(s){pair} (predicted peak {plan.peak_rss_bytes / 2**30:.1f} GiB)")
        return dataclasses.replace(policy, channel_groups=groups, pair_storage=storage)

    def process_features(self, raw_features, random_seed: int):
        """ColabFold's own numpy feature pipeline, unchanged (multimer: the raw features, sampled in the model)."""
        if self.multimer_mode:
            return raw_features
        from alphafold.model import features

        return features.np_example_to_features(np_example=raw_features, config=self.config,
                                               random_seed=random_seed)

    def forward_pass(self, feat: Mapping[str, np.ndarray], prev: Mapping[str, np.ndarray]
                     ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """One recycling pass under the runner's policy: (result with confidence metrics, next prev).

        ``feat`` holds one pass's features (monomer: no recycle dim; multimer:
        the raw features plus the pass's ``random_key``). Results are fp32
        numpy, except the next ``prev_pair``, already float16 (what
        ``predict`` makes of it anyway). ``predict`` casts both to float16, as
        ColabFold's runner does; parity checks and benchmarks call this
        directly and read the results before that cast.
        """
        batch = {k: _to_torch(v) for k, v in feat.items()}
        batch.update({k: _to_torch(v) for k, v in prev.items() if k != "prev_pair"})  # float16 -> float32
        # The recycled pair stays float16 (half the memory of a pair-sized float32 copy); the
        # recycling embedder upcasts it slice by slice, as AlphaFold_noE upcasts the whole.
        batch["prev_pair"] = torch.from_numpy(np.asarray(prev["prev_pair"]))
        with torch.inference_mode(), self.policy_for(feat).active():
            ret = self.model(batch)
            # float16 now, as predict would make it, before the confidence functions'
            # [L, L, 64] temporaries, and straight from the trunk's dtype: no float32 copy
            # of the pair is made, and a bf16 pair becomes float16 in its own storage.
            prev_pair = to_float16_(ret["representations"].pop("pair")).numpy()
            ret = _to_numpy(ret)
        reps = ret.pop("representations")
        new_prev = {
            "prev_msa_first_row": reps["msa_first_row"],
            "prev_pair": prev_pair,
            "prev_pos": ret["structure_module"]["final_atom_positions"],
        }
        seq_mask = feat["seq_mask"].astype(np.float32)
        # ColabFold's metrics, computed row slice by row slice (the same numbers, no [L, L, 64] temporaries).
        ret.update(row_sliced_confidence.get_confidence_metrics(
            prediction_result=ret, mask=seq_mask, rank_by=self.config.model.rank_by,
            keep_pae=self.config.model.calc_extended_ptm))
        ret["tol"] = confidence.compute_tol(np.asarray(prev["prev_pos"], np.float32), new_prev["prev_pos"],
                                            seq_mask, use_jnp=False)
        return ret, new_prev

    def predict(self, feat: Mapping[str, np.ndarray], random_seed: int = 0,
                return_representations: bool = False,
                callback: Optional[Callable[[Dict[str, Any], int], Any]] = None) -> Tuple[Dict[str, Any], int]:
        """ColabFold's recycle loop (alphafold.model.model.RunModel.predict) on the torch engine.

        The monomer model draws no random numbers at inference (features are
        resampled per recycle by the feature pipeline), so ``random_seed``
        only matters to the pipeline, as in the JAX runner. The multimer
        model samples its MSA in each pass from that pass's key, split from
        ``PRNGKey(random_seed)`` as the JAX runner splits it.
        """
        if self._params is None:
            raise UnsupportedConfig("no params assigned to the runner")
        num_iters = self.config.model.num_recycle + 1
        L = feat["aatype"].shape[0 if self.multimer_mode else 1]
        prev = zero_prev(L)
        if "all_atom_positions" in feat:
            logger.info("INFO: using provided all_atom_positions as initial guess")
            prev["prev_pos"] = np.asarray(feat["all_atom_positions"], np.float16)

        threads = self.policy.threads
        if threads:
            torch.set_num_threads(threads)
        result: Dict[str, Any] = {}
        r = 0
        keys = rng.pass_keys(random_seed, num_iters) if self.multimer_mode else None
        # A bar over passes x main Evoformer blocks when stderr is a terminal; else nothing
        # (the callback's per-recycle log lines are the progress report).
        num_blocks = self.config.model.embeddings_and_evoformer.evoformer_num_block
        with progress.evoformer_bar(num_iters, num_blocks, progress.model_tag(callback)):
            for r in range(num_iters):
                if self.multimer_mode:
                    sub_feat = {**feat, "random_key": keys[r]}
                else:
                    sub_feat = {k: v[r] for k, v in feat.items()}
                result, prev = self.forward_pass(sub_feat, prev)
                check_finite(result, r, progress.model_tag(callback))
                result, prev = _to_float16(result), _to_float16(prev)
                if return_representations:
                    result["representations"] = {"pair": prev["prev_pair"], "single": prev["prev_msa_first_row"]}
                if callback is not None:
                    callback(result, r)
                if result["ranking_confidence"] > self.config.model.stop_at_score:
                    break
                if r > 0 and result["tol"] < self.config.model.recycle_early_stop_tolerance:
                    break
        return result, r
