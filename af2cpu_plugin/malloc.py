"""glibc malloc settings for the engine, set by the plugin itself (not by the user's environment).

torch's CPU allocator is plain ``malloc``. glibc serves every block above its
mmap threshold (128 KiB, rising to at most 32 MiB as blocks are freed) with a
fresh ``mmap`` and returns it to the kernel on ``free``. The engine's
activations are megabytes each and are allocated and freed thousands of
times a pass, so each one is faulted in page by page again: on 2 cores that
cost about as much as the GEMMs that fill them (an Evoformer block took 358 ms
with glibc's defaults and 219 ms with ``MALLOC_MMAP_MAX_=0``).

:func:`tune` makes glibc serve those blocks from its heap and keep freed
memory for reuse (the ``mallopt`` equivalents of ``MALLOC_MMAP_MAX_=0`` and a
high ``MALLOC_TRIM_THRESHOLD_``). Peak RSS is then the peak of live blocks
plus fragmentation, which ``bench/speed.py`` reports. An explicit
``MALLOC_*`` setting in the environment wins: it is left alone; and
``AF2CPU_MALLOC_TUNE=0`` keeps glibc's defaults altogether.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

# Freed heap memory above this much stays with the process for reuse.
TRIM_THRESHOLD_BYTES = 1 << 30

_ENV = {M_MMAP_MAX: ("MALLOC_MMAP_MAX_", 0), M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD_BYTES)}
_done = False


def tune() -> bool:
    """Apply the settings once per process; True if glibc took them (False elsewhere: musl, macOS)."""
    global _done
    if _done:
        return True
    if os.environ.get("AF2CPU_MALLOC_TUNE", "1") == "0":
        return False
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
