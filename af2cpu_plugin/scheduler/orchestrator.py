"""The batch-level side of multi-instance runs: plan every prediction, run them on a cluster, hand results back.

The seam (:func:`af2cpu_plugin.hooks.colabfold_seam.installed`) calls
:meth:`MultiInstance.plan` for each prediction ColabFold's plan pass meets,
:meth:`MultiInstance.start` between the passes, and :meth:`MultiInstance.fetch`
for each prediction of the write pass. ``fetch`` returning None means
"compute it here": the cluster gave up on it, it cannot fit one instance's
share of the memory (it then runs after the cluster has stopped), or its
inputs differ from what was planned (which would be a ColabFold change this
plan did not foresee).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import cluster, cores
from .dispatch import Dispatcher
from .worker import warm_up
from .jobs import Job
from .store import PredictionStore, fingerprint, prediction_key

logger = logging.getLogger(__name__)

#: Under the output directory: every prediction's inputs and results (resumable runs).
STORE_DIR = Path(".af2cpu") / "predictions"


class MultiInstance:
    """``instances``: a count, or "auto"; ``scheduler``: an existing Dask scheduler's address (or None)."""

    def __init__(self, instances: Any = "auto", scheduler: Optional[str] = None,
                 memory_limit: Optional[int] = None) -> None:
        self.instances = instances
        self.scheduler = scheduler
        self.memory_limit = memory_limit
        self.jobs: List[Job] = []
        self._by_prediction: Dict[Tuple[str, str, int], Job] = {}
        self._stack = contextlib.ExitStack()
        self.dispatcher: Optional[Dispatcher] = None
        self._written: List[Job] = []
        self._warm: List[object] = []
        self._per_worker_memory: Optional[int] = None
        self._threads_per_worker = 1
        self._alone: set = set()  # keys of predictions that run in this process, after the cluster

    # -- plan pass ------------------------------------------------------------
    def plan(self, *, prefix: str, model_name: str, seed: int, runner: Any, features: Dict[str, Any],
             params_path: Path, result_dir: Path, return_representations: bool, whole_recycles: bool,
             param_keys: Tuple[str, ...] = ()) -> Job:
        """Write one prediction's inputs to the store and remember it."""
        from af2cpu_plugin.capacity import cost_model

        store = PredictionStore(Path(result_dir) / STORE_DIR)
        key = prediction_key(prefix, model_name, seed)
        fp = fingerprint(features)
        if not store.has_result(key, fp):
            store.save_features(fp, features)
        workload = runner.workload(features)
        policy = runner.policy
        estimate = cost_model.estimate(workload, policy.precision, 1, policy.memory_limit)
        passes = int(runner.config.model.num_recycle) + 1
        job = Job(key=key, prefix=prefix, model_name=model_name, seed=seed, store_root=str(store.root),
                  params_path=str(params_path), config=runner.config, policy=policy, fingerprint=fp,
                  num_res=workload.num_res, cost=estimate.seconds_per_pass * passes,
                  return_representations=return_representations, whole_recycles=whole_recycles,
                  peak_bytes=estimate.peak_rss_bytes, param_keys=tuple(param_keys), workload=workload)
        self.jobs.append(job)
        self._by_prediction[(prefix, model_name, seed)] = job
        return job

    # -- before the plan pass ------------------------------------------------------
    def prestart(self) -> None:
        """Start the cluster now when its size does not depend on the plan (a count, or a scheduler), so
        that the workers start and import the engine while the plan pass runs."""
        if self.instances != "auto" or self.scheduler:
            self._connect(None if self.scheduler else int(self.instances))

    def _connect(self, instances: Optional[int]) -> None:
        groups = per_worker = None
        if not self.scheduler:
            cpus = cores.usable_cpus()
            n = min(instances, len(cpus))
            groups = cores.split(cpus, n)
            per_worker = self.memory_limit // n if self.memory_limit else None
            self._per_worker_memory = per_worker
            self._threads_per_worker = min(len(g) for g in groups)
            logger.info("%d instances pinned to CPUs %s", n, " | ".join(",".join(map(str, g)) for g in groups))
        client = self._stack.enter_context(cluster.client(groups, self.scheduler, per_worker))
        # One warm-up task per worker, not waited for (kept referenced: Dask drops unreferenced tasks).
        self._warm = [client.submit(warm_up, workers=[address], allow_other_workers=False, pure=False,
                                    priority=10**9) for address in client.scheduler_info()["workers"]]
        self.dispatcher = Dispatcher(client)

    # -- between the passes -----------------------------------------------------
    def start(self) -> None:
        """Start (or connect to) the cluster unless it runs already, and submit every prediction not stored
        yet, longest first."""
        pending = [j for j in self.jobs if not PredictionStore(j.store_root).has_result(j.key, j.fingerprint)]
        logger.info("%d predictions planned, %d already done", len(self.jobs), len(self.jobs) - len(pending))
        if not pending:
            return
        if self.dispatcher is None:
            n = cores.auto_instances(len(cores.usable_cpus()), len(pending),
                                     max((j.peak_bytes or 0) for j in pending) or None, self.memory_limit)
            self._connect(n)
        if self._per_worker_memory:
            pending, alone = split_by_share(pending, self._per_worker_memory, self._threads_per_worker)
            for job, peak in alone:
                logger.info("%s: predicted peak %.1f GiB at the most chunking, more than an instance's share of "
                            "%.1f GiB: it runs alone in this process, with every core, after the instances",
                            job.key, peak / 2**30, self._per_worker_memory / 2**30)
            self._alone = {job.key for job, _ in alone}
            # Each instance plans its chunking for its share of the memory, not the whole.
            pending = [dataclasses.replace(j, policy=dataclasses.replace(j.policy, memory_limit=self._per_worker_memory))
                       for j in pending]
        self.dispatcher.submit(pending)

    # -- write pass -------------------------------------------------------------
    def fetch(self, prefix: str, model_name: str, seed: int, features: Dict[str, Any]
              ) -> Optional[Tuple[Dict[str, Any], int, List[Dict[str, Any]]]]:
        """(result, recycles, per-recycle results) of a planned prediction, waiting for it; None: compute it here."""
        job = self._by_prediction.get((prefix, model_name, seed))
        if job is None:
            return None
        if fingerprint(features) != job.fingerprint:
            logger.warning("prediction %s: its inputs differ from the planned ones; computing it here", job.key)
            return None
        store = PredictionStore(job.store_root)
        if job.key in self._alone and self.dispatcher is not None and not store.has_result(job.key, job.fingerprint):
            # Too big for an instance's share: the others finish first, then it has the node to itself.
            self._stop_cluster()
            return None
        if self.dispatcher is not None and not self.dispatcher.wait(job.key):
            # Fewer instances: let the others finish (their results are stored), stop the cluster, and
            # compute this one here, alone, with every core and all the memory.
            self._stop_cluster()
            return None
        if not store.has_result(job.key, job.fingerprint):
            return None
        result, recycles, per_recycle, _ = store.load_result(job.key)
        self._written.append(job)
        return result, recycles, per_recycle

    def computed_here(self, prefix: str, model_name: str, seed: int) -> None:
        """A planned prediction this process computed itself (``fetch`` said None): ColabFold writes its outputs
        next, as for a fetched one, so its inputs leave the store at the end too."""
        job = self._by_prediction.get((prefix, model_name, seed))
        if job is not None:
            self._written.append(job)

    def _stop_cluster(self) -> None:
        """Wait for every prediction in flight (their results are stored), then stop the cluster."""
        self.dispatcher.drain()
        self.dispatcher = None
        self._stack.close()

    def finish(self) -> None:
        """After the write pass: the predictions whose outputs ColabFold wrote leave the store (the output
        directory is then the single-instance one); anything else stays for a rerun to resume from."""
        written = {j.key for j in self._written}
        still_needed = {j.fingerprint for j in self.jobs if j.key not in written}
        for job in self._written:
            store = PredictionStore(job.store_root)
            store.remove_result(job.key)
            if job.fingerprint not in still_needed:
                store.remove_features(job.fingerprint)
        for root in {Path(j.store_root) for j in self.jobs}:
            for d in (root, root.parent):
                try:
                    d.rmdir()  # only when empty
                except OSError:
                    break

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        self._stack.close()


def split_by_share(jobs: List[Job], share: int, threads: int) -> Tuple[List[Job], List[Tuple[Job, int]]]:
    """(the jobs that fit an instance's ``share`` of the memory with some chunking, (job, predicted peak) of
    those that do not): these run alone after the cluster, rather than be killed on a worker three times
    first (Dask's memory limit). A job without a workload (planned by other code) is left to the cluster."""
    from af2cpu_plugin.capacity import cost_model

    fit, alone = [], []
    for job in jobs:
        estimate = None if job.workload is None else \
            cost_model.estimate(job.workload, job.policy.precision, threads, share)
        if estimate is not None and not estimate.fits:
            alone.append((job, estimate.peak_rss_bytes))
        else:
            fit.append(job)
    return fit, alone
