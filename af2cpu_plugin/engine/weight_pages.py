"""Weights held once: a haiku-layout param's file pages go back once its kernel layout is derived.

Params are bound straight from the safetensors cache, which is memory-mapped:
a weight's pages are read from the file (the page cache) on first touch and
then count in the process's RSS. The primitives derive the layouts their
kernels read (transposed, concatenated, scaled: :func:`.primitives.derived`),
after which the original is read again only to derive anew (another
precision, a rebinding). Keeping its pages mapped held the monomer's weights
twice: 0.34 of its 0.35 GiB, measured in fp32 at 200 residues.

:func:`release` asks the kernel to drop those pages from this process
(``madvise(MADV_PAGEOUT)``, Linux 5.4+). For a clean page of a file mapping
that only unmaps it: the page stays in the page cache, the next read is a
minor fault, and the values cannot change. Only pages wholly inside a
mapping of a ``.safetensors`` file are advised; anything else (weights built
in memory, an older kernel, another OS) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
from typing import Iterable, List, Optional, Tuple

import torch

MADV_PAGEOUT = 21  # linux/mman.h
_SUFFIX = ".safetensors"
_ranges: Optional[List[Tuple[int, int]]] = None  # file mappings of .safetensors files, read once per binding


def forget_mappings() -> None:
    """Read /proc/self/maps again at the next :func:`release` (params were rebound: new mappings)."""
    global _ranges
    _ranges = None


def release(sources: Iterable[torch.Tensor], derived_value: object) -> int:
    """Drop from RSS the file pages of ``sources`` that ``derived_value`` does not share; returns bytes advised."""
    madvise = _madvise()
    if madvise is None:
        return 0
    kept = {t.untyped_storage().data_ptr() for t in _tensors(derived_value)}
    advised = 0
    for source in sources:
        if source.untyped_storage().data_ptr() in kept:
            continue
        start, end = _page_interior(source)
        if end > start and _in_safetensors_mapping(start, end) and madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def _tensors(value: object) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _page_interior(t: torch.Tensor) -> Tuple[int, int]:
    """The whole pages inside ``t``'s bytes (its neighbours' pages are theirs too)."""
    page = mmap.PAGESIZE
    first = t.data_ptr()
    last = first + t.numel() * t.element_size()
    return -(-first // page) * page, last // page * page


def _in_safetensors_mapping(start: int, end: int) -> bool:
    global _ranges
    if _ranges is None:
        _ranges = _safetensors_mappings()
    return any(lo <= start and end <= hi for lo, hi in _ranges)


def _safetensors_mappings() -> List[Tuple[int, int]]:
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(_SUFFIX):
            lo, hi = fields[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@functools.lru_cache(maxsize=1)
def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn
