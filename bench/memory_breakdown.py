"""Where a pass's memory peaks: the live bytes each engine module reaches, in pair-sized tensors.

One pass of model 3 (random weights, all 48 blocks' weights loaded, the first
``--blocks`` Evoformer blocks run) on a single sequence, in this process.
Every module's ``forward``/``add_update_`` is wrapped: before the call the
block cache's window peak is reset, after it the peak is read
(``kernels.block_cache_stats``), so each row is the most the activations
reached while that module ran, counted in fp32 pair tensors ([L, L, 128]).
The pair itself is 1.0; the module at the top is the one to make frugal.
Needs the engine's native kernels (the block cache).

    python bench/memory_breakdown.py --length 1000 --precision fp32
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wrap(cls, name, record, base_live, pair_bytes):
    from af2cpu_plugin import kernels

    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self, *a, **kw):
        kernels.block_cache_reset_window_peak()
        out = original(self, *a, **kw)
        key = f"{cls.__name__}.{name}"
        peak = (kernels.block_cache_stats()["window_peak_bytes"] - base_live) / pair_bytes
        record[key] = max(record.get(key, 0.0), peak)
        return out

    setattr(cls, name, wrapper)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--groups", type=int, default=None, help="channel groups (default: what the runner picks)")
    ap.add_argument("--pair-storage", choices=("fp32", "bf16"), default=None,
                    help="the trunk's pair dtype (default: what the runner picks; bf16 needs --precision bf16)")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from af2cpu_plugin import converters, kernels
    from af2cpu_plugin.capacity.calibrate import single_sequence_case
    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.engine import (embeddings, heads, model, msa_attention, outer_product_mean, structure,
                                      transition, triangle_attention, triangle_multiplication, trunk)
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.hooks.colabfold_seam import params_path
    from af2cpu_plugin.runner import CpuRunModel, zero_prev
    from af2cpu_plugin.testing.params_cache import cached_random_data_dir

    if not kernels.block_cache_stats():
        print("the native block cache is not running here: nothing to measure", file=sys.stderr)
        return 1
    data = cached_random_data_dir("alphafold2_ptm", models=(3,))
    cfg, feat = single_sequence_case(args.length, 1)
    runner = CpuRunModel(cfg, converters.nested(converters.load_params(params_path(data, "alphafold2_ptm", 3))),
                         policy=RuntimePolicy(precision=args.precision, channel_groups=args.groups,
                                              pair_storage=args.pair_storage))
    _, tiny = single_sequence_case(16)
    runner.forward_pass({k: v[0] for k, v in tiny.items()}, zero_prev(16))  # every weight layout built
    del runner.model.evoformer.evoformer_iteration[args.blocks:]

    base_live = kernels.block_cache_stats()["live_bytes"]
    pair_bytes = args.length ** 2 * 128 * 4
    record: dict = {}
    for module in (embeddings, heads, model, msa_attention, outer_product_mean, structure, transition,
                   triangle_attention, triangle_multiplication, trunk):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, torch.nn.Module):
                for name in ("add_update_", "forward"):
                    if name in cls.__dict__:
                        _wrap(cls, name, record, base_live, pair_bytes)
    policy = runner.policy_for({k: v[0] for k, v in feat.items()})
    runner.forward_pass({k: v[0] for k, v in feat.items()}, zero_prev(args.length))
    print(f"CPU: {cpu_info().describe()}; {torch.get_num_threads()} threads")
    print(f"{args.length} residues, {args.precision}, {policy.pair_storage} pair, channel groups {policy.channel_groups}; "
          f"one pair tensor = {pair_bytes / 2**30:.2f} GiB")
    print("peak live activations while the module ran, in pair tensors (outermost modules include their parts):")
    for key, value in sorted(record.items(), key=lambda kv: -kv[1]):
        print(f"  {value:5.2f}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
