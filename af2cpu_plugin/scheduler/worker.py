"""What a worker runs: one prediction, from the store's inputs to the store's result.

Each worker process keeps its model runners (one per ColabFold model config,
params swapped in as ColabFold's ``predict_structure`` swaps them) and its
params (memory-mapped safetensors, shared through the page cache with every
other worker on the node), so a worker pays for loading once. Threads: as
many as the CPUs the worker is pinned to (:mod:`.cluster`).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, List, Tuple

from .jobs import RECYCLE_SCALARS, Job
from .store import PredictionStore

_lock = threading.Lock()  # one prediction at a time per worker process (its cores are its own)
_runners: Dict[Tuple[str, Any], Any] = {}
_params: Dict[str, Any] = {}


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _runner(job: Job):
    import dataclasses

    import torch

    from af2cpu_plugin import converters
    from af2cpu_plugin.runner import CpuRunModel

    threads = _threads()
    torch.set_num_threads(threads)
    policy = dataclasses.replace(job.policy, threads=threads)
    config_key = (json.dumps(job.config.to_dict(), sort_keys=True, default=str), policy)
    runner = _runners.get(config_key)
    if runner is None:
        _runners.clear()  # one model config per worker at a time: runs go query by query
        runner = _runners[config_key] = CpuRunModel(job.config, None, policy=policy)
    params = _params.get(job.params_path)
    if params is None:
        _params.clear()
        params = _params[job.params_path] = converters.nested(converters.load_params(job.params_path))
    if job.param_keys:
        params = {k: params[k] for k in job.param_keys}
    if getattr(runner, "_af2cpu_params_path", None) != job.params_path:
        runner.params = params
        runner._af2cpu_params_path = job.params_path
    return runner


def warm_up() -> None:
    """Import the engine and load its native kernels (run on each worker as it joins, while the plan pass
    runs in the main process): the first prediction then starts at once."""
    from af2cpu_plugin import kernels, runner  # noqa: F401

    kernels.status()


def run_job(job: Job) -> str:
    """Compute ``job`` unless its result is stored already; returns its key."""
    store = PredictionStore(job.store_root)
    if store.has_result(job.key, job.fingerprint):
        return job.key
    # Workers draw no progress bars (several on one terminal would interleave); the write pass replays
    # ColabFold's per-recycle lines instead.
    os.environ["AF2CPU_PROGRESS"] = "0"
    with _lock:
        runner = _runner(job)
        features = store.load_features(job.fingerprint)
        per_recycle: List[Dict[str, Any]] = []

        def record(result, recycles):
            if job.whole_recycles:
                per_recycle.append(dict(result))
            else:
                per_recycle.append({k: result[k] for k in RECYCLE_SCALARS if k in result})

        result, recycles = runner.predict(features, random_seed=job.seed,
                                          return_representations=job.return_representations, callback=record)
        store.save_result(job.key, result, recycles, per_recycle, job.fingerprint)
    return job.key
