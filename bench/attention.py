"""The attention kernels alone: the engine's native kernel against PyTorch's SDPA at AlphaFold's shapes.

Same inputs, same pinned cores, alternating repeats; prints time, GFLOP/s of
the two products (4·b·h·q·k·d) and the share of this machine's oneDNN GEMM
peak for the precision, measured in the same run. Shapes are one slice of
what the engine hands the kernel (``RuntimePolicy.slice_bytes``):

    python bench/attention.py                  # every shape, fp32 and bf16 (bf16 only with native bf16)
    python bench/attention.py --shapes tri400 --precision bf16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (batch rows in one slice, heads, queries, keys, head size)
SHAPES = {
    "tri100": (100, 4, 100, 100, 32),  # triangle attention, pair 128 ch / 4 heads
    "tri200": (80, 4, 200, 200, 32),
    "tri400": (40, 4, 400, 400, 32),
    "tri400_template": (64, 4, 400, 400, 16),  # template pair stack: 64 ch / 4 heads
    "msa_row_deep": (64, 8, 59, 59, 32),  # MSA row attention, 512 clusters x 59 residues
    "msa_col_deep": (16, 8, 512, 512, 32),  # MSA column attention over 512 clusters
    "extra_row_deep": (270, 8, 59, 59, 8),  # extra MSA row attention: 64 ch / 8 heads of 8, 5,120 sequences
    # As the engine hands them over (a slice of its default 4 MiB): q, k, v and the gate as strided views
    # of one fused [b * n, 4 * h * d] projection, gated (rows 2 KiB apart, where the shapes above have them
    # contiguous per tensor).
    "tri100_engine": (50, 4, 100, 100, 32),
    "tri200_engine": (20, 4, 200, 200, 32),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attention.json")
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
    from bench.flops import gemm_peak

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = []
    for prec in a.precision.split(","):
        dtype = dtypes[prec]
        if not kernels.cpu_supports(dtype):
            print(f"{prec}: skipped (this CPU cannot run the native {prec} kernel)")
            continue
        peak = gemm_peak(dtype)
        print(f"\n### {prec}: oneDNN GEMM peak {peak:.0f} GFLOP/s\n"
              "| shape (b, h, q, k, d) | SDPA ms | native ms | speedup | native GFLOP/s (share of peak) |\n"
              "|---|---|---|---|---|")
        for name in a.shapes.split(","):
            b, h, nq, nk, d = SHAPES[name]
            gen = torch.Generator().manual_seed(0)
            gate = None
            if name.endswith("_engine"):
                proj = torch.randn(b * nq, 4 * h * d, generator=gen).to(dtype)
                q, k, v, gate = (proj[:, i * h * d:(i + 1) * h * d].view(b, nq, h, d).transpose(1, 2)
                                 for i in range(4))
            else:
                q, k, v = (torch.randn(b, n, h, d, generator=gen).to(dtype).transpose(1, 2) for n in (nq, nk, nk))
            bias = torch.randn(1, h, nq, nk, generator=gen).to(dtype)

            def stock():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
                return out if gate is None else out * gate.sigmoid()

            sdpa = median_seconds(stock, a.repeats)
            native = median_seconds(lambda: kernels.biased_attention(q, k, v, bias, gate), a.repeats)
            gflops = 4 * b * h * nq * nk * d / native / 1e9
            rows.append({"shape": name, "dims": [b, h, nq, nk, d], "precision": prec, "sdpa_s": sdpa,
                         "native_s": native, "speedup": sdpa / native, "native_gflops": gflops, "gemm_peak": peak})
            print(f"| {name} {(b, h, nq, nk, d)} | {sdpa * 1e3:.2f} | {native * 1e3:.2f} | {sdpa / native:.2f}x "
                  f"| {gflops:.0f} ({gflops / peak:.0%}) |", flush=True)
    write_json(a.out, {"cpu": info.describe(), "threads": len(cpus), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
