"""What the kernel benchmarks (``attention.py``, ``products.py``) share: pinning and a median time."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, List


def pin(threads: int) -> List[int]:
    """Pin this process to the first ``threads`` CPUs of its affinity mask and give torch that many threads."""
    import torch

    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    return cpus


def median_seconds(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """One untimed call, then the median of ``repeats`` timed calls (more while under ``min_seconds`` in all)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
