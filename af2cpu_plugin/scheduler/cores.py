"""Which CPUs the instances get, and how many instances to run.

The usable CPUs are this process's affinity mask (taskset, Slurm, cpusets),
one logical CPU per physical core (a second hyper-thread adds contention to
these GEMM-bound loops, not speed), capped by a cgroup CPU quota: the same
count ``--threads`` defaults to. They are split into contiguous groups, one per
instance, so an instance's cores share caches (and, on a multi-socket node,
a NUMA node: a worker pinned before it allocates gets its memory there by
Linux's default first-touch policy).
"""

from __future__ import annotations

from typing import List, Optional, Sequence


def usable_cpus() -> List[int]:
    """One logical CPU per physical core of this process's affinity mask, as many as ``--threads`` defaults to
    (the cgroup quota caps it)."""
    from af2cpu_plugin.hooks.cpu_backend import allowed_cpus, default_threads, one_cpu_per_core

    try:
        cpus = one_cpu_per_core()
    except OSError:  # no sysfs topology: every allowed CPU
        cpus = allowed_cpus()
    return cpus[: default_threads()]


def split(cpus: Sequence[int], instances: int) -> List[List[int]]:
    """``cpus`` in ``instances`` contiguous groups, sizes differing by at most one."""
    if not 1 <= instances <= len(cpus):
        raise ValueError(f"{instances} instances on {len(cpus)} CPUs: use 1 to {len(cpus)}")
    base, extra = divmod(len(cpus), instances)
    groups, start = [], 0
    for i in range(instances):
        size = base + (1 if i < extra else 0)
        groups.append(list(cpus[start:start + size]))
        start += size
    return groups


def auto_instances(num_cpus: int, predictions: int, peak_bytes: Optional[int], memory_limit: Optional[int]) -> int:
    """As many instances as CPUs (one core each: the engine scales sub-linearly with threads, so
    independent predictions use cores best), no more than there are predictions, and no more than
    fit in memory side by side at the largest prediction's predicted peak."""
    n = max(1, min(num_cpus, predictions))
    if peak_bytes and memory_limit:
        n = max(1, min(n, memory_limit // peak_bytes))
    return n
