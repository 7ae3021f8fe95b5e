"""What the kernel benchmarks (``attention.py``, ``products.py``, ``fp32_passes.py``) share: pinning, a median time, a JSON record."""

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


def start_kernel_bench(threads: int):
    """Pin to ``threads`` CPUs and print the CPU, torch and whether the native kernels run; returns
    (cpu info, pinned CPUs), or None (after saying why) when the kernels cannot run here."""
    import torch

    cpus = pin(threads)
    from af2cpu_plugin import kernels
    from af2cpu_plugin.cpu import cpu_info

    info = cpu_info()
    usable, why = kernels.status()
    print(f"CPU: {info.describe()}\ntorch {torch.__version__}; {len(cpus)} threads; {why}")
    return (info, cpus) if usable else None


def write_json(path, payload) -> None:
    """``payload`` as JSON at ``path``, written atomically (a temporary, then a rename)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
