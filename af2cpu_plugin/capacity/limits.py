"""How much memory this process may use, and where that number comes from.

Three sources, the smallest known wins:

* the cgroup limit (containers, Slurm, systemd): cgroup v2 ``memory.max``, or
  cgroup v1 ``memory.limit_in_bytes``, of this process's cgroup and of every
  cgroup above it (a parent's limit binds the children too);
* ``MemAvailable`` from ``/proc/meminfo`` (what the kernel can hand out without
  swapping), plus this process's own resident memory (``VmRSS``): the cost
  model predicts the peak RSS of the *whole* process, and what it already holds
  (Python, ColabFold, JAX) is counted in that peak but is not "available";
* ``--memory-limit SIZE``, which replaces both (the user knows best, e.g. that
  other jobs on the node will leave soon, or that they must leave room).

Only Linux files are read (no psutil: it is in the venv only as a dependency of
dask's ``distributed``, and it does not read cgroup limits anyway). The file
paths are module attributes so that tests can point them at fake files.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator, Optional, Tuple

PROC_SELF_CGROUP = "/proc/self/cgroup"
PROC_SELF_STATUS = "/proc/self/status"
PROC_MEMINFO = "/proc/meminfo"
CGROUP_ROOT = "/sys/fs/cgroup"

#: cgroup v1 writes "no limit" as the largest page-aligned counter
#: (9223372036854771712 on x86-64); anything this large means none.
V1_UNLIMITED = 1 << 60

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
SIZE_FORMAT = "a number of bytes, or one with a binary unit: 512M, 20G, 20GiB, 1.5T"


@dataclasses.dataclass(frozen=True)
class MemoryLimit:
    """``bytes`` this process may use (None: nothing could be read) and ``source`` of that number."""

    bytes: Optional[int]
    source: str

    def describe(self) -> str:
        if self.bytes is None:
            return f"unknown ({self.source})"
        return f"{format_size(self.bytes)} ({self.source})"


def parse_size(text: str) -> int:
    """``"20G"``, ``"20GiB"``, ``"512M"``, ``"1.5T"``, ``"21474836480"`` -> bytes.

    Units are binary (G = GiB = 2**30) whatever the spelling: memory is sold and
    limited in binary units, and ``docker --memory 20g`` means the same.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a memory size — write {SIZE_FORMAT}")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.upper()])
    if size < 1:
        raise ValueError(f"{text!r} is not a memory size — write {SIZE_FORMAT} (more than 0)")
    return size


def format_size(size: int) -> str:
    """Bytes as GiB with one decimal (MiB below 1 GiB, KiB below 1 MiB), for messages."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.0f} MiB"
    return f"{size / (1 << 10):.0f} KiB"


# ---------------------------------------------------------------------------
# cgroup
# ---------------------------------------------------------------------------


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(root: Path, cgroup_path: str) -> Iterator[Path]:
    """``root/a/b``, ``root/a``, ``root``: this cgroup, then every cgroup above it.

    In a container with its own cgroup namespace, ``/proc/self/cgroup`` says
    ``/`` and the container's cgroup is mounted at ``root`` itself; where the
    named path is not mounted, only the levels that exist are read.
    """
    parts = [p for p in cgroup_path.strip().split("/") if p]
    for n in range(len(parts), -1, -1):
        yield root.joinpath(*parts[:n])


def _cgroup_v2_limit(root: Path, cgroup_path: str) -> Optional[int]:
    limits = []
    for d in _ancestors(root, cgroup_path):
        value = _read(d / "memory.max")
        if value and value != "max" and value.isdigit():
            limits.append(int(value))
    return min(limits) if limits else None


def _cgroup_v1_limit(root: Path, cgroup_path: str) -> Optional[int]:
    limits = []
    for d in _ancestors(root / "memory", cgroup_path):
        value = _read(d / "memory.limit_in_bytes")
        if value and value.isdigit() and int(value) < V1_UNLIMITED:
            limits.append(int(value))
    return min(limits) if limits else None


def cgroup_limit() -> Optional[Tuple[int, str]]:
    """``(bytes, source)`` of this process's cgroup memory limit (v2 or v1); None if there is none."""
    text = _read(Path(PROC_SELF_CGROUP)) or ""
    root = Path(CGROUP_ROOT)
    found = []
    for line in text.splitlines():
        # "0::/path" is cgroup v2; "4:memory:/path" (or "4:cpu,memory:/path") is v1's memory controller.
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            size = _cgroup_v2_limit(root, path)
            if size is not None:
                found.append((size, "cgroup memory.max"))
        elif "memory" in controllers.split(","):
            size = _cgroup_v1_limit(root, path)
            if size is not None:
                found.append((size, "cgroup memory.limit_in_bytes"))
    return min(found) if found else None


# ---------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------


def _kib_field(path: str, name: str) -> Optional[int]:
    """``name:   123 kB`` from a /proc file, in bytes."""
    for line in (_read(Path(path)) or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            fields = value.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024
    return None


def available_memory() -> Optional[int]:
    """MemAvailable plus this process's own RSS, in bytes; None where /proc/meminfo lacks it."""
    available = _kib_field(PROC_MEMINFO, "MemAvailable")
    if available is None:
        return None
    return available + (_kib_field(PROC_SELF_STATUS, "VmRSS") or 0)


# ---------------------------------------------------------------------------
# the limit
# ---------------------------------------------------------------------------


def memory_limit(override: Optional[str] = None) -> MemoryLimit:
    """The memory this process may use: ``--memory-limit`` if given, else the smallest known limit.

    Raises ValueError (one line, ``what — fix``) for an ``override`` that is not a size.
    """
    if override is not None:
        return MemoryLimit(parse_size(override), "--memory-limit")
    known = [cgroup_limit()]
    available = available_memory()
    if available is not None:
        known.append((available, "MemAvailable"))
    known = [x for x in known if x is not None]
    if not known:
        return MemoryLimit(None, "no cgroup limit or /proc/meminfo to read")
    return MemoryLimit(*min(known))
