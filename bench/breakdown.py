"""Where a warm pass of --backend cpu spends its time: per module and per kernel.

    python bench/breakdown.py --case single200 --precision bf16
    python bench/breakdown.py --case deep_msa --precision fp32 --ops 25

Runs one untimed pass (warm-up: weight layouts, allocator), then one pass
with a wall-clock timer on every engine module (exclusive of its children,
summed by class) and ``torch.profiler`` on the kernels; prints both tables,
the pass's matmul work and the achieved GFLOP/s against this machine's
oneDNN GEMM peak for that precision, measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class ModuleTimer:
    """Exclusive wall time per module class (the CPU is synchronous, so hooks time it exactly)."""

    def __init__(self, model) -> None:
        self.totals = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack = []  # [class name, start, time spent in children]
        self._handles = []
        for module in model.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._exit))

    def _enter(self, module, args):
        self._stack.append([type(module).__name__, time.perf_counter(), 0.0])

    def _exit(self, module, args, out):
        name, start, children = self._stack.pop()
        spent = time.perf_counter() - start
        self.totals[name] += spent - children
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += spent

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="single200")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--kernels", default="native", choices=["native", "stock"],
                    help="the engine's own attention kernel where it applies (default), or PyTorch's only")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--ops", type=int, default=20, help="kernel rows to print")
    ap.add_argument("--slice-mib", type=float, default=None,
                    help="RuntimePolicy.slice_bytes in MiB for an A/B (0: no slicing); default: the policy's")
    ap.add_argument("--quick", action="store_true", help="warm pass time only (no module or kernel tables)")
    ap.add_argument("--shapes", action="store_true",
                    help="kernel table split by input shape (which GEMM shapes the time goes to)")
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args(argv)

    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()  # as `af2cpu batch` does, before torch loads
    import torch

    torch.set_num_threads(args.threads)
    from bench.cases import case_features
    from bench.flops import MatmulFlops, gemm_peak
    from af2cpu_plugin.converters import load_params, nested
    from af2cpu_plugin.cpu import cpu_info, resolve_precision
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.random_params import write_random_params
    from af2cpu_plugin.runner import CpuRunModel, zero_prev
    from af2cpu_plugin.testing.params_cache import test_cache_root

    precision = resolve_precision(args.precision)
    print(f"CPU: {cpu_info().describe()}; threads {args.threads}; precision {precision}")
    data = args.data or test_cache_root() / "bench-data"
    write_random_params(data, "alphafold2_ptm", models=(3,), seed=0, method="haiku")
    cfg, feat = case_features(args.case, passes=1)
    policy = RuntimePolicy(precision=precision, threads=args.threads, kernels=args.kernels)
    if args.slice_mib is not None:
        import dataclasses

        policy = dataclasses.replace(policy, slice_bytes=int(args.slice_mib * 2**20) or None)
    runner = CpuRunModel(cfg, nested(load_params(data / "params" / "params_model_3_ptm.npz")), policy=policy)
    sub = {k: v[0] for k, v in feat.items()}
    prev = zero_prev(feat["aatype"].shape[1])

    def one_pass():
        return runner.forward_pass(sub, prev)

    t = time.perf_counter()
    one_pass()
    print(f"first pass {time.perf_counter() - t:.2f} s")
    if args.quick:
        t = time.perf_counter()
        one_pass()
        print(f"warm pass {time.perf_counter() - t:.2f} s; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        return 0
    with MatmulFlops() as counter:
        one_pass()
    timer = ModuleTimer(runner.model)
    t = time.perf_counter()
    one_pass()
    wall = time.perf_counter() - t
    timer.remove()
    peak = gemm_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    rate = counter.total / wall / 1e9
    print(f"warm pass {wall:.2f} s; matmul work {counter.total / 1e12:.3f} TFLOP -> {rate:.0f} GFLOP/s "
          f"= {rate / peak:.0%} of this machine's {precision} GEMM peak ({peak:.0f} GFLOP/s)")
    print("\n| module (exclusive) | calls | s | % of pass |\n|---|---|---|---|")
    for name, s in sorted(timer.totals.items(), key=lambda kv: -kv[1]):
        if s / wall >= 0.002:
            print(f"| {name} | {timer.calls[name]} | {s:.2f} | {100 * s / wall:.1f} |")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        one_pass()
    print()
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total",
                                                                    row_limit=args.ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
