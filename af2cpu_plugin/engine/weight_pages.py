"""Weights held once: a haiku-layout param's file pages go back once its kernel layout is derived.

Params are bound straight from the safetensors cache, which is memory-mapped:
a weight's pages are read from the file (the page cache) on first touch and
then count in the process's RSS. The primitives derive the layouts their
kernels read (transposed, concatenated, scaled: :func:`.primitives.derived`),
after which the original is read again only to derive anew (another
precision, a rebinding). Keeping its pages mapped held the monomer's weights
twice: 0.34 of its 0.35 GiB, measured in fp32 at 200 residues.

:func:`release` asks the kernel to drop those pages from this process
(``madvise(MADV_DONTNEED)``). For a clean page of a file mapping that only
unmaps it: the page stays in the page cache, the next read is a minor fault,
and the values cannot change. ``MADV_PAGEOUT``, used before, also evicted
the page from the page cache, so every rebinding (ColabFold binds each model
once per query) read the weights back from disk: 5 ms against 55 ms for a
48 MiB weight on a Zen 3 VM's disk, 0.4-0.6 s per binding of the monomer.

The mapping is private and writable, so a weight written in place (nothing
in the engine does) would live in a private copy of its page, which
``MADV_DONTNEED`` would silently discard. ``/proc/self/pagemap`` says which
pages are still the file's: a source with any page of its own (anonymous,
or swapped out) is left alone. Only pages wholly inside a mapping of a
``.safetensors`` file are advised; anything else (weights built in memory,
no pagemap, another OS) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from typing import Iterable, List, Optional, Tuple

import torch

MADV_DONTNEED = 4  # linux/mman.h
_SUFFIX = ".safetensors"
_ranges: Optional[List[Tuple[int, int]]] = None  # file mappings of .safetensors files, read once per binding
_pagemap_fd: Optional[Tuple[int, int]] = None  # (pid, descriptor of /proc/self/pagemap)


def forget_mappings() -> None:
    """Read /proc/self/maps again at the next :func:`release` (params were rebound: new mappings)."""
    global _ranges
    _ranges = None


def release_loaded(tensors: Iterable[torch.Tensor]) -> int:
    """Drop from RSS the file pages of freshly loaded ``tensors``; returns bytes advised.

    The loader reads every byte of a params file once to check its checksum, which left the whole file
    resident (0.37 GiB for a monomer model), and ColabFold loads every model's params before the first
    prediction: five models held 1.8 GiB of pages that the engine reads again only where it binds them.
    """
    forget_mappings()  # the file was mapped after the last binding
    return release(tensors, None)


def release(sources: Iterable[torch.Tensor], derived_value: object) -> int:
    """Drop from RSS the file pages of ``sources`` that ``derived_value`` does not share; returns bytes advised."""
    madvise = _madvise()
    if madvise is None:
        return 0
    kept = {t.untyped_storage().data_ptr() for t in _tensors(derived_value)}
    pagemap = _pagemap()
    if pagemap is None:
        return 0
    advised = 0
    for source in sources:
        if source.untyped_storage().data_ptr() in kept:
            continue
        start, end = _page_interior(source)
        if end > start and _in_safetensors_mapping(start, end) and _file_pages(pagemap, start, end) and \
                madvise(start, end - start, MADV_DONTNEED) == 0:
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


# /proc/self/pagemap, one little-endian 64-bit entry per page; its top byte holds bit 63 (present), 62
# (swapped) and 61 (a file page, or shared anonymous memory). PFNs need privileges; these flags do not.
# A page written in place is a private copy, anonymous (present, not a file page) or swapped out.
_ENTRY = 8
_PRIVATE_COPY = bytes(1 if (b & 0x40) or (b & 0xA0) == 0x80 else 0 for b in range(256))


def _pagemap() -> Optional[int]:
    """This process's /proc/self/pagemap, opened once (again in a forked child: /proc/self is resolved at open)."""
    global _pagemap_fd
    if _pagemap_fd is None or _pagemap_fd[0] != os.getpid():
        try:
            _pagemap_fd = (os.getpid(), os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None
    return _pagemap_fd[1]


def _file_pages(pagemap: int, start: int, end: int) -> bool:
    """Whether every page in [start, end) is the file's own: present as a file page, or not present at all."""
    size = (end - start) // mmap.PAGESIZE * _ENTRY
    try:
        raw = os.pread(pagemap, size, start // mmap.PAGESIZE * _ENTRY)
    except OSError:
        return False
    return len(raw) == size and 1 not in raw[_ENTRY - 1::_ENTRY].translate(_PRIVATE_COPY)


@functools.lru_cache(maxsize=1)
def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn
