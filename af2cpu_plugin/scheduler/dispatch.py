"""Submitting predictions to Dask, longest first, and getting them back.

:class:`Dispatcher` is handed every prediction of the batch (the seam's plan
pass), submits those whose result is not stored yet, and is asked for each
result in ColabFold's order (the seam's write pass). A worker that dies
mid-prediction (killed, out of memory) has its prediction moved to another
worker by Dask; after ``allowed-failures`` deaths Dask gives up on it
(``KilledWorker``) and :meth:`Dispatcher.wait` reports it failed: the seam
then computes it in the main process with every core and all the memory, the
"fewer instances" retry. Nothing is half-written: results are stored
atomically by the worker.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

from .jobs import Job
from .worker import run_job

logger = logging.getLogger(__name__)


class Dispatcher:
    """Predictions in flight on a ``distributed.Client``."""

    def __init__(self, client) -> None:
        self.client = client
        self.futures: Dict[str, object] = {}
        self.failed: Dict[str, str] = {}

    def submit(self, jobs: List[Job]) -> int:
        """Queue ``jobs`` (the orchestrator passes those not stored yet), the costliest first; returns how many
        were queued (a key already in flight is not queued again)."""
        queued = 0
        for job in sorted(jobs, key=lambda j: -j.cost):
            if job.key in self.futures:
                continue
            # Dask runs higher priorities first; pure=False: a rerun of a key is a new task.
            self.futures[job.key] = self.client.submit(run_job, job, key=f"af2cpu-{job.key}", priority=int(job.cost),
                                                       pure=False, retries=1)
            queued += 1
        return queued

    def wait(self, key: str) -> bool:
        """Block until ``key`` is computed (True at once when nothing is in flight for it: the caller reads the
        store); False when the cluster gave up on it (the reason in ``failed``)."""
        future = self.futures.get(key)
        if future is None:
            return True
        try:
            future.result()
            return True
        except Exception as exc:  # KilledWorker, MemoryError, anything the engine raised on the worker
            self.failed[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            logger.warning("prediction %s failed on its worker (%s); computing it here", key, self.failed[key])
            return False
        finally:
            self.futures.pop(key, None)

    def drain(self) -> None:
        """Wait for every prediction still queued or running (failures are recorded, not raised)."""
        for key in list(self.futures):
            self.wait(key)

    def cancel(self) -> None:
        if self.futures:
            self.client.cancel(list(self.futures.values()))
            self.futures.clear()
