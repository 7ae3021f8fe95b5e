"""The engine's own CPU kernels (``RuntimePolicy.kernels="native"``), built on first use.

Biased, optionally gated, multi-head attention for AlphaFold's head sizes
(``biased_attention.cpp``; AVX-512 fp32 and bf16, AVX2 fp32, each path picked
at run time), faster than PyTorch's CPU flash attention on the same inputs
(``bench/attention.py``); LayerNorm from fp32 rows straight to bf16
(``layer_norm.cpp``), the bf16 trunk's one-pass replacement for layer_norm
followed by a cast, and from channel-major bf16 (the triangle
multiplication's centre LayerNorm, without the permuted copy), and in fp32
from strided rows (a transposed pair) and channel-major input without
PyTorch's contiguous copy, and projected straight to the pair's few
attention-bias outputs; and memory-bound passes fused into one
(``pointwise.cpp``: the triangle multiplication's bias, mask and sigmoid gate;
the bf16 trunk's residual update into its fp32 stream; the fp32 gated output added
into the pair); and the triangle
multiplication's fp32 products as one oneDNN GEMM per channel per thread
(``channel_bmm.cpp``); and a caching allocator for torch's large CPU blocks
(``block_cache.cpp``, installed by :mod:`af2cpu_plugin.malloc`). C++ with intrinsics, compiled
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
from typing import Optional, Tuple

import torch

logger = logging.getLogger(__name__)

KERNELS_DIR_ENV = "AF2CPU_KERNELS_DIR"
_SOURCES = tuple(Path(__file__).with_name(name) for name in (
    "biased_attention.cpp", "layer_norm.cpp", "pointwise.cpp", "channel_bmm.cpp", "block_cache.cpp"))
_HEADERS = tuple(Path(__file__).with_name(name) for name in ("cpu_features.h", "vec_math.h"))  # part of the build key, not compiled alone
# -fopenmp makes at::parallel_for parallel; the library then links libgomp.so.1,
# which resolves to the copy torch has already loaded (one OpenMP runtime).
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
# /proc/cpuinfo flags of the kernel's paths (biased_attention.cpp picks one at run time).
_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
_AVX2 = ("avx2", "fma")
# Head sizes the attention wrapper takes -> the size the kernel runs them at
# (its own are 16 and 32; the extra MSA's 8-wide heads are zero-padded to 16,
# except on the AVX-512 fp32 path, which takes them as they are).
_RUN_AT = {8: 16, 16: 16, 32: 32}


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

    Head sizes 16 and 32 (AlphaFold's triangle, MSA and template attention)
    and 8 (the extra MSA's row attention: padded to 16 but on the AVX-512
    fp32 path, which saves the pad copies and half the products), fp32 or bf16, and at
    least 16 keys: below that the packing costs more than it saves.
    """
    return (q.shape[-1] in _RUN_AT and k.shape[-2] >= 16 and q.dtype in (torch.float32, torch.bfloat16)
            and cpu_supports(q.dtype) and status()[0])


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T + bias) v for q, k, v [b, h, n, d] and bias broadcastable to [b, h, nq, nk].

    q is not scaled here (scale it first, as ``scale=1`` in SDPA). Returns
    [b, h, nq, d] whose memory is [b, nq, h, d], as SDPA's CPU kernel does;
    times ``sigmoid(gate)`` when a gate [b, h, nq, d] is given (any strides
    but the last), applied before the result is rounded to q's dtype.
    """
    bias = bias.to(q.dtype)
    if bias.stride(-1) != 1:
        bias = bias.contiguous()
    head_size = q.shape[-1]
    pad = _RUN_AT.get(head_size, head_size) - head_size
    if head_size == 8 and q.dtype == torch.float32 and _avx512():
        pad = 0
    if pad:  # zero channels add nothing to q·k, and give zero outputs
        q, k, v = (torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v))
        gate = None if gate is None else torch.nn.functional.pad(gate, (0, pad))
        return _ops().biased_attention(q, k, v, bias, gate)[..., :head_size]
    if gate is not None and gate.stride(-1) != 1:
        gate = gate.contiguous()
    return _ops().biased_attention(q, k, v, bias, gate)


def can_layer_norm_to_bf16(x: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_to_bf16` takes ``x``: fp32 or bf16, channels a multiple of 16, a bf16-capable CPU."""
    return (x.dtype in (torch.float32, torch.bfloat16) and x.shape[-1] % 16 == 0 and cpu_supports(torch.bfloat16)
            and status()[0])


def layer_norm_to_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis of fp32 or bf16 ``x`` (fp32 statistics), returned in bf16 (contiguous), in one pass.

    A 3-D ``x`` with unit stride along the channels (a transposed pair) is
    read where it lies; anything else is made contiguous first.
    """
    return _ops().layer_norm_to_bf16(x, weight, bias, eps)


def can_layer_norm_channel_major(x: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_channel_major_to_bf16` takes ``x``: contiguous bf16 [C, ...], C a multiple of 16."""
    return (x.dtype == torch.bfloat16 and x.dim() >= 2 and x.is_contiguous() and x.shape[0] % 16 == 0
            and cpu_supports(torch.bfloat16) and status()[0])


def layer_norm_channel_major_to_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                     eps: float) -> torch.Tensor:
    """LayerNorm over axis 0 of channel-major bf16 ``x`` [C, ...] (fp32 statistics): [..., C] in bf16.

    ``x.movedim(0, -1)`` normalised, without making that permuted copy first.
    """
    rest = x.shape[1:]
    y = _ops().layer_norm_channel_major_to_bf16(x.reshape(x.shape[0], -1), weight, bias, eps)
    return y.view(*rest, x.shape[0])


def can_layer_norm_fp32(x: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_fp32` takes ``x``: fp32, channels a multiple of 8, an AVX2 (or better) CPU."""
    return x.dtype == torch.float32 and x.dim() >= 1 and x.shape[-1] % 8 == 0 and cpu_supports(torch.float32) \
        and status()[0]


def layer_norm_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis of fp32 ``x`` (contiguous result). A 3-D ``x`` with unit stride along the
    channels (a transposed pair) is read where it lies, without the contiguous copy PyTorch's kernel needs."""
    return _ops().layer_norm_fp32(x, weight, bias, eps)


def can_layer_norm_project_fp32(x: torch.Tensor, proj: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_project_fp32` takes ``x`` and ``proj``: as :func:`can_layer_norm_fp32`, and
    ``proj`` fp32 [4 or 8, C]."""
    return (can_layer_norm_fp32(x) and proj.dtype == torch.float32 and proj.dim() == 2
            and proj.shape[0] in (4, 8) and proj.shape[1] == x.shape[-1])


def layer_norm_project_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, proj: torch.Tensor,
                            eps: float) -> torch.Tensor:
    """``proj @ LayerNorm(x).T`` for fp32 ``x`` [..., C] (a 3-D ``x`` may be strided, as in
    :func:`layer_norm_fp32`) and ``proj`` [H, C]: [H, rows], without writing the normalised rows."""
    return _ops().layer_norm_project_fp32(x, weight, bias, proj.contiguous(), eps)


def can_layer_norm_channel_major_fp32(x: torch.Tensor) -> bool:
    """Whether :func:`layer_norm_channel_major_fp32` takes ``x``: contiguous fp32 [C, ...], C a multiple of 8."""
    return (x.dtype == torch.float32 and x.dim() >= 2 and x.is_contiguous() and x.shape[0] % 8 == 0
            and cpu_supports(torch.float32) and status()[0])


def layer_norm_channel_major_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                  eps: float) -> torch.Tensor:
    """LayerNorm over axis 0 of channel-major fp32 ``x`` [C, ...]: [..., C], without the permuted copy."""
    rest = x.shape[1:]
    y = _ops().layer_norm_channel_major_fp32(x.reshape(x.shape[0], -1), weight, bias, eps)
    return y.view(*rest, x.shape[0])


def can_gate_rows(x: torch.Tensor) -> bool:
    """Whether :func:`gated_rows_` takes ``x``: contiguous [2n, P], fp32 (AVX2) or bf16 (avx512_bf16)."""
    return (x.dim() == 2 and x.is_contiguous() and x.shape[0] % 2 == 0 and x.dtype in (torch.float32, torch.bfloat16)
            and cpu_supports(x.dtype) and status()[0])


def gated_rows_(x: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows ``[:n]`` of ``x`` [2n, P] become ``(x[r] + bias[r]) * mask * sigmoid(x[n+r] + bias[n+r])``, in place.

    One pass, fp32 arithmetic, rounded once; ``bias`` [2n] and ``mask`` [P]
    (None: all ones) are fp32. Returns ``x[:n]``.
    """
    _ops().gated_rows_(x, bias, mask)
    return x[: x.shape[0] // 2]


def can_add_into(acc: torch.Tensor, update: torch.Tensor) -> bool:
    """Whether :func:`add_into_` takes these: an fp32 ``acc`` and a bf16 ``update``, or a bf16 ``acc`` and a bf16
    or fp32 ``update``; of one shape, 3-D, unit stride last."""
    dtypes = (acc.dtype, update.dtype)
    return (dtypes in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                       (torch.bfloat16, torch.float32)) and acc.dim() == 3
            and acc.shape == update.shape and acc.stride(-1) == 1 and update.stride(-1) == 1
            and acc.shape[-1] % 16 == 0 and cpu_supports(torch.bfloat16) and status()[0])


def add_into_(acc: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``acc += update``: an fp32 stream and a bf16 update without an fp32 copy of the update, or a bf16 stream
    (the bf16 trunk's pair), summed in fp32 and rounded once."""
    return _ops().add_into_(acc, update)


def can_gated_add(acc: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> bool:
    """Whether :func:`gated_add_` takes these: fp32, 2-D, one shape, unit stride last, a multiple of 8 wide."""
    return (all(t.dtype == torch.float32 and t.dim() == 2 and t.shape == acc.shape and t.stride(-1) == 1
                for t in (acc, x, gate))
            and acc.shape[-1] % 8 == 0 and cpu_supports(torch.float32) and status()[0])


def gated_add_(acc: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``acc += x * sigmoid(gate)`` in one pass (fp32; any row strides)."""
    return _ops().gated_add_(acc, x, gate)


def can_channel_bmm(a: torch.Tensor) -> bool:
    """Whether :func:`channel_bmm_nt` serves ``a``: fp32 on an AVX-512 CPU.

    In bf16 ``torch.bmm`` is oneDNN's already, and faster. On a Zen 5 a
    channel's oneDNN GEMM per thread is 1.5-2.3x ``torch.bmm`` (MKL) at 177-400
    residues. On a real Zen 3 (AVX2 only, 2 threads, 128 channels) it was 0.70-1.0x
    ``torch.bmm`` outgoing and 0.51-0.64x incoming at 130-400 residues (MKL's AVX2
    path is oneDNN's equal there, and the incoming form's copies are not free), so
    AVX2-only CPUs (and ``AF2CPU_FORCE_AVX2=1``) keep ``torch.bmm``.
    """
    return a.dtype == torch.float32 and a.dim() == 3 and _avx512() and status()[0]


def _avx512() -> bool:
    """Whether the kernels take their AVX-512 paths here (``AF2CPU_FORCE_AVX2=1`` holds them to AVX2)."""
    from af2cpu_plugin.cpu import cpu_info

    return all(f in cpu_info().flags for f in _AVX512) and os.environ.get("AF2CPU_FORCE_AVX2") != "1"


def channel_bmm_nt(a: torch.Tensor, b: torch.Tensor, k_block: int = 0) -> torch.Tensor:
    """``a @ b.transpose(1, 2)`` for a [C, M, K], b [C, N, K] (any strides): a channel's oneDNN GEMM per thread.

    ``k_block > 0`` sums the inner axis in blocks of that many, in order.
    """
    return _ops().channel_bmm_nt(a, b, k_block)


def install_block_cache(huge_pages: bool) -> bool:
    """Make ``block_cache.cpp`` torch's CPU allocator for this process (blocks of 1 MiB and more).

    ``huge_pages`` asks for transparent huge pages on its blocks. True when
    installed (again: a later call only updates ``huge_pages``); False when the
    kernels cannot build here, and torch keeps malloc.
    """
    if not status()[0]:
        return False
    torch.ops.af2cpu.block_cache_install(huge_pages)
    return True


def block_cache_stats() -> dict:
    """The cache's bytes (live, peak live, cached, peak mapped), its hits and misses so far, and the peak
    of live bytes since :func:`block_cache_reset_window_peak` (``window_peak_bytes``)."""
    if not status()[0]:
        return {}
    keys = ("live_bytes", "peak_live_bytes", "cached_bytes", "peak_mapped_bytes", "hits", "misses",
            "window_peak_bytes")
    return dict(zip(keys, torch.ops.af2cpu.block_cache_stats()))


def block_cache_reset_window_peak() -> None:
    """Start a measurement window: ``window_peak_bytes`` restarts from the live bytes now."""
    if status()[0]:
        torch.ops.af2cpu.block_cache_reset_window_peak()


def _ops():
    """The kernels' op namespace, building or loading the library on first use; raises why it cannot."""
    usable, why = status()
    if not usable:
        raise RuntimeError(why)
    return torch.ops.af2cpu
