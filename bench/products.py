"""The engine's fp32 contractions alone, against what PyTorch would run, with their rounding error.

Two products where MKL's fp32 GEMM (what ``torch.matmul`` and ``torch.bmm``
call; on AMD CPUs it takes its AVX2 path) was the engine's slowest matmul work:

* the outer product mean's sum over sequences, ``matmul_2d`` (oneDNN, the
  inner axis summed in blocks of ``FP32_K_BLOCK``) against ``torch.matmul``
  and against oneDNN in one chain;
* the triangle multiplication's per-channel products, ``channel_products``
  (a channel's oneDNN GEMM per thread) against ``torch.bmm``, outgoing and
  incoming (transposed operands).

Same inputs and pinned cores; prints time, GFLOP/s, the share of this
machine's oneDNN fp32 GEMM peak measured in the same run, and the max and
mean error against float64:

    python bench/products.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (kind, shape): "sum" is [M, K] @ [K, N]; "tri" is C channels of [R, R] @ [R, R]^T.
SHAPES = {
    "opm_extra_deep": ("sum", (192, 5120, 1888)),  # extra MSA stack: 6 rows x 32 ch, 5,120 sequences, 59 res x 32 ch
    "opm_extra_x3": ("sum", (192, 5120, 5664)),  # the same at 177 residues
    "opm_main_x3": ("sum", (352, 512, 5664)),  # Evoformer: 11 rows x 32 ch, 512 clusters
    "tri59": ("tri", (128, 59)),  # the deep-MSA chain
    "tri100": ("tri", (128, 100)),
    "tri130": ("tri", (128, 130)),
    "tri177": ("tri", (128, 177)),
    "tri400": ("tri", (128, 400)),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "products.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.timing import median_seconds, pin, write_json

    cpus = pin(a.threads)
    from af2cpu_plugin import kernels
    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.engine.primitives import channel_products, matmul_2d
    from bench.flops import gemm_peak

    peak = gemm_peak(torch.float32)
    print(f"CPU: {cpu_info().describe()}\ntorch {torch.__version__}; {len(cpus)} threads; oneDNN fp32 GEMM peak "
          f"{peak:.0f} GFLOP/s; {kernels.status()[1]}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    print("\n| shape | engine | ms | GFLOP/s (share of peak) | max error | mean error |\n|---|---|---|---|---|---|")
    for name in [s for s in a.shapes.split(",") if s]:
        kind, shape = SHAPES[name]
        if kind == "sum":
            m, k, n = shape
            x, y = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
            ref = x.double() @ y.double()
            flops = 2 * m * k * n
            engines = {
                "torch.matmul (MKL)": lambda: torch.matmul(x, y),
                "oneDNN, one chain": lambda: torch.ops.mkldnn._linear_pointwise(x, y.t(), None, "none", [], ""),
                "matmul_2d (blocked)": lambda: matmul_2d(x, y),
            }
        else:
            c, r = shape
            left, right = torch.randn(c, r, r, generator=gen), torch.randn(c, r, r, generator=gen)
            ref = torch.bmm(left.double(), right.double().transpose(1, 2))
            ref_in = torch.bmm(right.double().transpose(1, 2), left.double())
            flops = 2 * c * r**3
            engines = {
                "torch.bmm (MKL)": lambda: torch.bmm(left, right.transpose(1, 2)),
                "channel_products": lambda: channel_products(left, right),
                "torch.bmm (MKL), incoming": lambda: torch.bmm(right.transpose(1, 2), left),
                "channel_products, incoming": lambda: channel_products(right.transpose(1, 2), left.transpose(1, 2)),
            }
        for engine, fn in engines.items():
            with torch.inference_mode(), RuntimePolicy(kernels="native").active():
                seconds = median_seconds(fn, repeats=3, min_seconds=0.6)
                out = fn().double()
            err = (out - (ref_in if "incoming" in engine else ref)).abs()
            rate = flops / seconds / 1e9
            row = {"shape": name, "dims": shape, "engine": engine, "ms": seconds * 1e3, "gflops": rate,
                   "share_of_peak": rate / peak, "max_error": float(err.max()), "mean_error": float(err.mean())}
            rows.append(row)
            print(f"| {name} {shape} | {engine} | {row['ms']:.1f} | {rate:.0f} ({rate / peak:.0%}) "
                  f"| {row['max_error']:.2e} | {row['mean_error']:.2e} |", flush=True)
    write_json(a.out, {"cpu": cpu_info().describe(), "torch": torch.__version__, "threads": len(cpus),
                       "fp32_gemm_peak_gflops": peak, "results": rows})
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
