"""One prediction as a unit of work: what a worker needs to compute it, and what it costs."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

#: What ColabFold's per-recycle callback reads from a result when it writes no per-recycle files.
RECYCLE_SCALARS = ("mean_plddt", "ptm", "iptm", "tol")


@dataclasses.dataclass(frozen=True)
class Job:
    """A (query, model, seed) prediction.

    key: :func:`.store.prediction_key`; store_root: the :class:`~.store.PredictionStore` it is read from
    and written to; params_path: the model's params (a ColabFold ``.npz``, read through the converted
    safetensors cache: memory-mapped, never pickled); config: ColabFold's model config (what the
    single-instance runner gets); policy: the engine's :class:`~af2cpu_plugin.engine.policy.RuntimePolicy`
    (threads are the worker's own); fingerprint: of the features in the store; return_representations,
    whole_recycles: what ColabFold's ``predict_structure`` asks of the runner and its callback
    (``--save-all``/``--save-*-representations``, ``--save-recycles``); num_res, cost: for ordering
    (longest first) and memory; param_keys: the
    params' top-level scopes the runner is given (ColabFold keeps only those of the model it compiled:
    models 1-2 without templates drop their template weights); workload: what one pass computes
    (:class:`~af2cpu_plugin.capacity.cost_model.Workload`).
    """

    key: str
    prefix: str
    model_name: str
    seed: int
    store_root: str
    params_path: str
    config: Any
    policy: Any
    fingerprint: str
    num_res: int
    cost: float = 0.0
    return_representations: bool = False
    whole_recycles: bool = False
    peak_bytes: Optional[int] = None
    param_keys: Tuple[str, ...] = ()
    workload: Any = None  # the cost model's Workload of one pass: what fits an instance's share of memory
