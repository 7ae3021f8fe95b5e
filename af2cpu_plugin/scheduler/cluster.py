"""A Dask cluster to run predictions on: local pinned workers, or an existing scheduler.

Locally (``--instances N``) a ``distributed.LocalCluster`` of N worker
processes, one thread each (a worker runs one prediction at a time; its torch
threads are its cores). A worker plugin pins each worker to its group of CPUs
(:func:`.cores.split`) before it runs anything, so its torch threads, and the
memory it first touches, stay there. ``--scheduler ADDRESS`` connects to a
cluster someone else started (``dask scheduler``/``dask worker``,
dask-jobqueue on SLURM or PBS): its workers are pinned by whoever started them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Sequence

from distributed.diagnostics.plugin import WorkerPlugin


def pin_process(cpus: Sequence[int]) -> None:
    """Pin every thread of this process to ``cpus`` (a thread's affinity is its own; threads made later
    inherit their creator's, so torch's OpenMP pool, made at the first prediction, stays inside)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that just ended
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cpus))


class PinWorker(WorkerPlugin):
    """A Dask worker plugin: the worker named ``i`` runs on ``groups[i]``."""

    name = "af2cpu-pin"

    def __init__(self, groups: Sequence[Sequence[int]]) -> None:
        self.groups = [list(g) for g in groups]

    def setup(self, worker) -> None:
        pin_process(self.groups[int(worker.name) % len(self.groups)])


@contextlib.contextmanager
def client(groups: Optional[List[List[int]]] = None, scheduler: Optional[str] = None,
           memory_limit_per_worker: Optional[int] = None) -> Iterator[object]:
    """A ``distributed.Client``: to ``scheduler`` when given, else to a local cluster of pinned workers."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    import dask

    # A prediction whose worker dies (killed, out of memory) is moved to another worker twice, then
    # reported failed (KilledWorker): the orchestrator then runs it alone (see .dispatch).
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        cluster = LocalCluster(n_workers=len(groups), threads_per_worker=1, processes=True,
                               memory_limit=memory_limit_per_worker or 0, dashboard_address=None,
                               silence_logs=40)
    try:
        with Client(cluster) as c:
            c.register_plugin(PinWorker(groups), name=PinWorker.name)
            yield c
    finally:
        cluster.close()
