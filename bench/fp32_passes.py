"""The fp32 trunk's memory-bound passes alone: the native kernels against the stock ops they replace.

At the pair sizes of an L-residue single sequence (P = L*L positions, 128
channels), same inputs, same pinned cores, median of repeats:

* the triangle multiplication's gated output, ``pair += (x W + b) * sigmoid(x G + c)``:
  oneDNN GEMMs with the sigmoid and product as post-ops plus a residual add (the
  engine's bf16 path) against two plain GEMMs and ``gated_add_`` (its fp32 path);
* LayerNorm of a transposed pair slice (triangle attention around the ending
  node), of the channel-major [128, P] products (the centre LayerNorm) and of
  contiguous rows: PyTorch's ``layer_norm`` (which first copies the first two
  contiguous) against ``layer_norm_fp32`` / ``layer_norm_channel_major_fp32``.

    python bench/fp32_passes.py --lengths 100,200
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="100,200")
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fp32_passes.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    from bench.timing import median_seconds, start_kernel_bench, write_json

    started = start_kernel_bench(a.threads)
    if started is None:
        return 1
    info, cpus = started
    from af2cpu_plugin import kernels

    linear = torch.ops.mkldnn._linear_pointwise
    rows = []
    print("\n| L | pass | stock ms | native ms | speedup |\n|---|---|---|---|---|")
    for n in (int(x) for x in a.lengths.split(",")):
        gen = torch.Generator().manual_seed(n)
        c = 128
        x = torch.randn(n * n, c, generator=gen)
        w, g = torch.randn(c, c, generator=gen) * c ** -0.5, torch.randn(c, c, generator=gen) * c ** -0.5
        b, bg = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
        pair = torch.randn(n * n, c, generator=gen)
        scale, offset = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
        cube = torch.randn(n, n, c, generator=gen)
        channel_major = torch.randn(c, n, n, generator=gen)

        def fused_post_ops():
            gate = linear(x, g, bg, "sigmoid", [], "")
            pair.add_(linear.binary(x, gate, w, b, "mul"))

        def plain_and_gated_add():
            gate, update = linear(x, g, bg, "none", [], ""), linear(x, w, b, "none", [], "")
            kernels.gated_add_(pair, update, gate)

        transposed = cube.transpose(0, 1)[: n // 2]
        cases = [
            ("gated output", fused_post_ops, plain_and_gated_add),
            ("LayerNorm, transposed slice", lambda: F.layer_norm(transposed, (c,), scale, offset, 1e-5),
             lambda: kernels.layer_norm_fp32(transposed, scale, offset, 1e-5)),
            ("LayerNorm, channel-major", lambda: F.layer_norm(channel_major.movedim(0, -1), (c,), scale, offset, 1e-5),
             lambda: kernels.layer_norm_channel_major_fp32(channel_major, scale, offset, 1e-5)),
            ("LayerNorm, contiguous", lambda: F.layer_norm(cube, (c,), scale, offset, 1e-5),
             lambda: kernels.layer_norm_fp32(cube, scale, offset, 1e-5)),
        ]
        for name, stock, native in cases:
            t_stock = median_seconds(stock, a.repeats)
            t_native = median_seconds(native, a.repeats)
            rows.append({"length": n, "pass": name, "stock_s": t_stock, "native_s": t_native})
            print(f"| {n} | {name} | {t_stock * 1e3:.2f} | {t_native * 1e3:.2f} | {t_stock / t_native:.2f}x |",
                  flush=True)
    write_json(a.out, {"cpu": info.describe(), "threads": len(cpus), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
