"""The engine's own CPU kernels (``RuntimePolicy.kernels="native"``), built on first use.

Two kernels: biased multi-head attention for AlphaFold's head sizes
(``biased_attention.cpp``; AVX-512 fp32 and bf16, AVX2 fp32, each path picked
at run time), faster than PyTorch's CPU flash attention on the same inputs
(``bench/attention.py``); and LayerNorm from fp32 rows straight to bf16
(``layer_norm.cpp``, AVX-512 with avx512_bf16), the bf16 trunk's one-pass
replacement for layer_norm followed by a cast. C++ with intrinsics, compiled
once per machine with torch's extension builder (g++ and ninja) into
``$AF2CPU_KERNELS_DIR`` (default ``~/.cache/af2cpu-plugin/kernels``), keyed by
the source, torch version and compiler flags, under a file lock so that
instances started together build it once.

Everything here degrades: on a CPU without AVX2 and FMA (bf16 needs AVX-512
with avx512_bf16), without a compiler, or when the build fails, :func:`status`
says why in one line and the engine keeps PyTorch's kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Tuple

import torch

logger = logging.getLogger(__name__)

KERNELS_DIR_ENV = "AF2CPU_KERNELS_DIR"
_SOURCES = tuple(Path(__file__).with_name(name) for name in ("biased_attention.cpp", "layer_norm.cpp"))
_HEADERS = (Path(__file__).with_name("cpu_features.h"),)  # part of the build key, not compiled alone
# -fopenmp makes at::parallel_for parallel; the library then links libgomp.so.1,
# which resolves to the copy torch has already loaded (one OpenMP runtime).
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
# /proc/cpuinfo flags of the kernel's paths (biased_attention.cpp picks one at run time).
_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
_AVX2 = ("avx2", "fma")
HEAD_SIZES = (16, 32)


def kernels_dir() -> Path:
    env = os.environ.get(KERNELS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "af2cpu-plugin" / "kernels"


@functools.lru_cache(maxsize=None)
def cpu_supports(dtype: torch.dtype) -> bool:
    from af2cpu_plugin.cpu import cpu_info

    flags = cpu_info().flags
    if dtype == torch.bfloat16:
        return all(f in flags for f in _AVX512 + ("avx512_bf16",))
    return all(f in flags for f in _AVX512) or all(f in flags for f in _AVX2)


@functools.lru_cache(maxsize=1)
def status() -> Tuple[bool, str]:
    """(usable, why): the kernels are built (or build now) and load on this CPU."""
    if not cpu_supports(torch.float32):
        return False, "native kernels need AVX2 and FMA, which this CPU lacks"
    try:
        _load()
    except Exception as exc:  # no compiler or ninja, a failed build, a read-only cache: keep stock kernels
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        first_error = next((line for line in lines if "error" in line.lower()), lines[-1])  # the compiler's own
        return False, f"native kernels did not build ({type(exc).__name__}: {first_error.strip()[:200]})"
    return True, f"native kernels in {kernels_dir()}"


def _load() -> None:
    from filelock import FileLock
    from torch.utils import cpp_extension

    source = b"".join(path.read_bytes() for path in _SOURCES + _HEADERS)
    key = hashlib.sha256(source + torch.__version__.encode() + " ".join(_CFLAGS + _LDFLAGS).encode()).hexdigest()[:16]
    name = f"af2cpu_kernels_{key}"
    build_dir = kernels_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    _ninja_on_path()
    with FileLock(str(build_dir) + ".lock", timeout=900):
        if not (build_dir / f"{name}.so").exists():
            logger.info("building the native kernels once for this machine (%s)", build_dir)
        cpp_extension.load(name=name, sources=[str(path) for path in _SOURCES], extra_cflags=list(_CFLAGS),
                           extra_ldflags=list(_LDFLAGS), build_directory=str(build_dir),
                           is_python_module=False, verbose=False)


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pip package's binary may not be there (venv not activated)."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def can_attend(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`biased_attention` takes these inputs (else use PyTorch's kernel).

    Head sizes 16 and 32 (AlphaFold's triangle, MSA and template attention),
    fp32 or bf16, and at least 16 keys: below that the packing costs more
    than it saves.
    """
    return (q.shape[-1] in HEAD_SIZES and k.shape[-2] >= 16 and q.dtype in (torch.float32, torch.bfloat16)
            and cpu_supports(q.dtype) and status()[0])


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v for q, k, v [b, h, n, d] and bias broadcastable to [b, h, nq, nk].

    q is not scaled here (scale it first, as ``scale=1`` in SDPA). Returns
    [b, h, nq, d] whose memory is [b, nq, h, d], as SDPA's CPU kernel does.
    """
    bias = bias.to(q.dtype)
    if bias.stride(-1) != 1:
        bias = bias.contiguous()
    return _ops().biased_attention(q, k, v, bias)


def can_layer_norm_to_bf16(x: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_to_bf16` takes ``x``: fp32, channels a multiple of 16, a bf16-capable CPU."""
    return (x.dtype == torch.float32 and x.shape[-1] % 16 == 0 and cpu_supports(torch.bfloat16)
            and status()[0])


def layer_norm_to_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis of fp32 ``x`` (fp32 statistics), returned in bf16, in one pass."""
    return _ops().layer_norm_to_bf16(x.contiguous(), weight, bias, eps)


def _ops():
    """The kernels' op namespace, building or loading the library on first use; raises why it cannot."""
    usable, why = status()
    if not usable:
        raise RuntimeError(why)
    return torch.ops.af2cpu
