"""The engine's memory allocation, set by the plugin itself (not by the user's environment).

Two layers. torch's blocks of 1 MiB and more go to the engine's own caching
allocator (``kernels/block_cache.cpp``, when the native kernels build): freed
blocks are kept and handed out again, so after the first Evoformer block a
pass neither faults pages in nor grows the heap. At 400 residues in fp32 a
warm pass took 56 s with it and 63 s on the glibc settings below alone; at
200 residues peak RSS was 1.9 GiB, where glibc's heap gave 2.1-3.1 GiB from
run to run (fragmentation). ``AF2CPU_BLOCK_CACHE=0`` leaves torch on malloc.
Everything smaller, and everything not torch's, stays with glibc, tuned as
follows.

torch's CPU allocator is plain ``malloc``. glibc serves every block above its
mmap threshold (128 KiB at start, adjusted as blocks are freed) with a fresh
``mmap`` and returns it to the kernel on ``free``. The engine's activations
are megabytes each and are allocated and freed thousands of times a pass, so
each one is faulted in page by page again: on 2 cores that costs about as
much as the GEMMs that fill them.

:func:`tune` raises the mmap threshold to glibc's maximum (32 MiB) and keeps
freed heap memory for reuse (a high trim threshold): the mallopt equivalents
of ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``.
Blocks above 32 MiB still come from mmap and go back to the kernel when
freed. Serving *every* block from the heap (``MALLOC_MMAP_MAX_=0``) was
faster still, but fragments the heap: at 300-400 residues in fp32 peak RSS
went from about 2 GiB to 7-15 GiB. An explicit ``MALLOC_*`` setting in the
environment wins: it is left alone; ``AF2CPU_MALLOC_TUNE=0`` keeps glibc's
defaults altogether.

Without the cache (``AF2CPU_BLOCK_CACHE=0``, or no compiler for the native
kernels) the blocks above 32 MiB are the cost left. ``af2cpu`` (the CLI) sets
``THP_MEM_ALLOC_ENABLE=1`` before torch is imported (torch reads it once), so
torch's allocator asks for transparent huge pages on blocks over 2 MiB: 400
residues, bf16, native kernels, a warm pass took 64.1 s without and 46.6 s
with it (peak RSS 1.89 and 1.88 GiB). It must be set before ``import torch``,
which is why it lives in the CLI and not here; a user's own
``THP_MEM_ALLOC_ENABLE=0`` wins. The cache follows the same setting for its
own blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Freed heap memory above this much stays with the process for reuse.
TRIM_THRESHOLD_BYTES = 1 << 30
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); mallopt refuses more.
MMAP_THRESHOLD_BYTES = 32 << 20

_ENV = {M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD_BYTES),
        M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD_BYTES)}
_done = False


def tune() -> bool:
    """Apply the settings once per process; True if glibc took them (False elsewhere: musl, macOS)."""
    global _done
    if _done:
        return True
    if os.environ.get("AF2CPU_MALLOC_TUNE", "1") == "0":
        return False
    if os.environ.get("AF2CPU_BLOCK_CACHE", "1") != "0":
        from af2cpu_plugin import kernels

        # Huge pages on the cache's blocks only where torch's own allocator was told to use them (the CLI).
        kernels.install_block_cache(huge_pages=os.environ.get("THP_MEM_ALLOC_ENABLE") == "1")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = True
    for param, (env, value) in _ENV.items():
        if env in os.environ:
            continue
        ok = bool(mallopt(param, value)) and ok
    _done = ok
    if not ok:
        logger.debug("glibc mallopt refused the engine's allocator settings")
    return ok
