"""af2cpu_plugin.capacity.limits: memory sizes, cgroup v1/v2 limits and MemAvailable, from fake /proc and /sys files."""

from __future__ import annotations

import pytest

from af2cpu_plugin.capacity import limits

GIB = 1 << 30


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """Point limits at empty fake /proc and /sys files; returns a writer ``put(path, text)``."""
    proc, sys_root = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    sys_root.mkdir()
    monkeypatch.setattr(limits, "PROC_SELF_CGROUP", str(proc / "self_cgroup"))
    monkeypatch.setattr(limits, "PROC_SELF_STATUS", str(proc / "self_status"))
    monkeypatch.setattr(limits, "PROC_MEMINFO", str(proc / "meminfo"))
    monkeypatch.setattr(limits, "CGROUP_ROOT", str(sys_root))
    files = {"cgroup": proc / "self_cgroup", "status": proc / "self_status", "meminfo": proc / "meminfo"}

    def put(name: str, text: str) -> None:
        path = files.get(name) or sys_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return put


def _meminfo(available_kib: int) -> str:
    return f"MemTotal:       65000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {available_kib} kB\n"


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("20G", 20 * GIB), ("20GiB", 20 * GIB), ("20gib", 20 * GIB), ("20GB", 20 * GIB), ("20 G", 20 * GIB),
    ("512M", 512 << 20), ("512MiB", 512 << 20), ("64K", 64 << 10), ("1.5T", 3 << 39), ("1.5G", 3 << 29),
    ("21474836480", 20 * GIB), ("100B", 100),
])
def test_parse_size_binary_units(text, size):
    assert limits.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "20X", "-1G", "twenty", "20 GB extra", "0", "0G", "1e9"])
def test_parse_size_rejects_with_one_line_naming_the_format(text):
    with pytest.raises(ValueError) as info:
        limits.parse_size(text)
    message = str(info.value)
    assert "\n" not in message and " — " in message and "20G" in message and "512M" in message


def test_format_size():
    assert limits.format_size(20 * GIB) == "20.0 GiB"
    assert limits.format_size(512 << 20) == "512 MiB"
    assert limits.format_size(1024) == "1 KiB"  # --memory-limit 1K said "0 MiB"


# ---------------------------------------------------------------------------
# cgroup v2 / v1
# ---------------------------------------------------------------------------


def test_cgroup_v2_limit_of_an_ancestor_binds(fake_system):
    fake_system("cgroup", "0::/user.slice/job42\n")
    fake_system("user.slice/job42/memory.max", "max\n")
    fake_system("user.slice/memory.max", f"{8 * GIB}\n")
    fake_system("memory.max", f"{16 * GIB}\n")  # never binding tighter than the smallest
    assert limits.cgroup_limit() == (8 * GIB, "cgroup memory.max")


def test_cgroup_v2_max_means_none(fake_system):
    fake_system("cgroup", "0::/job\n")
    fake_system("job/memory.max", "max\n")
    assert limits.cgroup_limit() is None


def test_cgroup_v2_namespaced_container_reads_the_root(fake_system):
    """In a container with its own cgroup namespace /proc/self/cgroup says '/' and the limit sits at the mount root."""
    fake_system("cgroup", "0::/\n")
    fake_system("memory.max", f"{4 * GIB}\n")
    assert limits.cgroup_limit() == (4 * GIB, "cgroup memory.max")


def test_cgroup_v1_limit_and_unlimited_sentinel(fake_system):
    fake_system("cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    fake_system("memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    fake_system("memory/memory.limit_in_bytes", "9223372036854771712\n")
    assert limits.cgroup_limit() is None
    fake_system("memory/docker/abc/memory.limit_in_bytes", f"{6 * GIB}\n")
    assert limits.cgroup_limit() == (6 * GIB, "cgroup memory.limit_in_bytes")


def test_no_cgroup_files_means_none(fake_system):
    assert limits.cgroup_limit() is None


# ---------------------------------------------------------------------------
# MemAvailable and the limit
# ---------------------------------------------------------------------------


def test_available_memory_counts_what_this_process_holds(fake_system):
    fake_system("meminfo", _meminfo(16 * 1024 * 1024))
    fake_system("status", "Name:\tpython\nVmRSS:\t  1048576 kB\n")
    assert limits.available_memory() == 17 * GIB


def test_smallest_known_limit_wins(fake_system):
    fake_system("meminfo", _meminfo(16 * 1024 * 1024))
    fake_system("cgroup", "0::/job\n")
    fake_system("job/memory.max", f"{8 * GIB}\n")
    assert limits.memory_limit() == limits.MemoryLimit(8 * GIB, "cgroup memory.max")
    fake_system("job/memory.max", f"{32 * GIB}\n")
    assert limits.memory_limit() == limits.MemoryLimit(16 * GIB, "MemAvailable")


def test_override_replaces_every_source(fake_system):
    fake_system("meminfo", _meminfo(1024 * 1024))
    limit = limits.memory_limit("20G")  # larger than MemAvailable: the user's word wins
    assert limit == limits.MemoryLimit(20 * GIB, "--memory-limit")
    assert limit.describe() == "20.0 GiB (--memory-limit)"
    with pytest.raises(ValueError):
        limits.memory_limit("lots")


def test_nothing_readable_is_unknown(fake_system):
    limit = limits.memory_limit()
    assert limit.bytes is None and limit.describe().startswith("unknown")


def test_real_system_reads_something():
    """On the Linux machines this runs on, /proc/meminfo at least is there."""
    limit = limits.memory_limit()
    assert limit.bytes and limit.bytes > 0 and limit.source
