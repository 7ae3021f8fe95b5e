"""Matmul work of a pass, and this machine's GEMM peak, for the benchmarks' efficiency column.

``MatmulFlops`` is a dispatch mode that adds up 2·m·n·k for every GEMM-like op
the engine runs (oneDNN linear, mm/addmm/bmm/baddbmm, the attention kernel's
two products); elementwise work is not counted. The same count is used for
every engine of a case (it is the model's work, not an engine's), so
``flops / pass time`` is each engine's achieved matmul rate.

``gemm_peak`` measures the oneDNN GEMM (``mkldnn._linear_pointwise``, the
engine's kernel) on a square problem, per precision, on the calling process's
threads.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _linear_pointwise(args):
    x, w = args[0], args[1]  # default overload: (x, w [out, in], b, attr, scalars, algorithm)
    return 2 * _numel(x.shape[:-1]) * w.shape[0] * w.shape[1]


def _linear_pointwise_binary(args):
    x, w = args[0], args[2]  # binary overload: (x, other, w [out, in], b, attr)
    return 2 * _numel(x.shape[:-1]) * w.shape[0] * w.shape[1]


def _matmul(args):
    # Under inference mode the dispatch mode sees torch.matmul itself, not the mm/bmm it becomes.
    x, y = args[0], args[1]
    m = x.shape[-2] if x.dim() > 1 else 1
    n = y.shape[-1] if y.dim() > 1 else 1
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]) if x.dim() > 2 or y.dim() > 2 else ()
    return 2 * _numel(batch) * m * n * x.shape[-1]


def _sdpa(args):
    q, k, v = args[:3]
    return 2 * _numel(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_COUNTERS = {
    "mkldnn._linear_pointwise.default": _linear_pointwise,
    "mkldnn._linear_pointwise.binary": _linear_pointwise_binary,
    "aten.matmul": _matmul,
    "aten.mm": lambda a: 2 * a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
    "aten.addmm": lambda a: 2 * a[1].shape[0] * a[1].shape[1] * a[2].shape[1],
    "aten.bmm": lambda a: 2 * _numel(a[0].shape) * a[1].shape[-1],
    "aten.baddbmm": lambda a: 2 * _numel(a[1].shape) * a[2].shape[-1],
    "aten._scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten._scaled_dot_product_attention_math": _sdpa,
    # Under inference_mode the dispatch mode sees SDPA whole, not the flash kernel it decomposes into.
    "aten.scaled_dot_product_attention": _sdpa,
    "af2cpu.channel_bmm_nt": lambda a: 2 * _numel(a[0].shape) * a[1].shape[1],  # the triangle products, fp32
    "af2cpu.biased_attention": lambda a: _sdpa([_unpadded(t) for t in a[:3]]),  # the engine's own kernel
}


def _unpadded(t: torch.Tensor) -> torch.Tensor:
    """``t`` without the zero channels the native kernel's wrapper pads small heads with (8 -> 16): not the model's work."""
    used = t.shape[-1]
    while used > 1 and not bool(t[..., used // 2 : used].any()):
        used //= 2
    return t[..., :used]


class MatmulFlops(TorchDispatchMode):
    """``with MatmulFlops() as f: ...`` then ``f.total`` (FLOPs) and ``f.by_op``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"{func.namespace}.{func._opname}"
        count = _COUNTERS.get(f"{name}.{func._overloadname}", _COUNTERS.get(name))
        if count is not None:
            self.by_op[name] += int(count(args))
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def gemm_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of the GEMM the engine uses, [n, n] x [n, n], on this process's threads: oneDNN's, or in bf16
    on a CPU where oneDNN has no bf16 inner product (no AVX-512: a Zen 3) PyTorch's, what the engine falls back to
    (``primitives._ONEDNN_DTYPES``)."""
    from af2cpu_plugin.engine.primitives import linear_2d

    x = torch.randn(n, n).to(dtype)
    w = torch.randn(n, n).to(dtype)
    run = lambda: linear_2d(x, w, None)  # noqa: E731
    run()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        run()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
