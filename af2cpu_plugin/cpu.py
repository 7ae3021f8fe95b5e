"""What this CPU can do, and what ``--precision auto`` means on it.

Our machines differ from run to run (AVX-512 with native bf16 dot products on
one, AVX2 only on the next), so the engine, the CLI and the benchmarks ask
here instead of assuming: the vector ISA torch dispatches to
(``torch.backends.cpu.get_cpu_capability()``), the bf16 instructions from
``/proc/cpuinfo`` and the CPUs this process may run on.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from typing import FrozenSet

# CPU flags (Linux names) that give native bf16 dot products with fp32 accumulation.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    capability: str  # torch's dispatch level: "AVX512", "AVX2", "DEFAULT", ...
    flags: FrozenSet[str]
    cpus: int  # CPUs in this process's affinity mask

    @property
    def native_bf16(self) -> bool:
        """bf16 GEMMs run in hardware (avx512_bf16 or AMX); elsewhere oneDNN emulates them, ~100x slower."""
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    @property
    def calibration_name(self) -> str:
        """The name a calibration is stored under: the model and torch's dispatch level, because virtual
        machines may report only the vendor line ("AMD EPYC" for a Zen 3 and a Zen 5) and a shared home
        directory must not give one machine another's speed."""
        return f"{self.model} {self.capability}"

    def describe(self) -> str:
        """One line for logs and benchmark headers."""
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in self.flags]
        return (f"{self.model} | torch capability {self.capability} | {', '.join(isa) or 'no AVX'} | "
                f"{self.cpus} CPUs in affinity mask | native bf16: {'yes' if self.native_bf16 else 'no'}")


def _proc_cpuinfo() -> tuple:
    """(model name, flags) of the first CPU in /proc/cpuinfo (x86 Linux); a fallback elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if "model name" in fields and "flags" in fields:
                    break
    except OSError:
        pass
    return fields.get("model name") or platform.processor() or "unknown CPU", frozenset(fields.get("flags", "").split())


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    import torch

    model, flags = _proc_cpuinfo()
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return CpuInfo(model=model, capability=torch.backends.cpu.get_cpu_capability(), flags=flags, cpus=cpus)


def resolve_precision(requested: str, info: CpuInfo = None) -> str:
    """``auto`` -> bf16 where the CPU has native bf16 dot products, else fp32; others unchanged.

    Never picks emulated bf16. Raises ValueError for an unknown name.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISION_CHOICES)}")
    if requested != "auto":
        return requested
    info = info or cpu_info()
    return "bf16" if info.native_bf16 else "fp32"
