"""``af2cpu calibrate``: measure this machine's cost-model coefficients and store them.

Each measurement is one child process pinned to the same CPUs (its peak RSS
is its own): model 3 ptm with random weights (the cost does not depend on the
values; all 48 blocks' weights are loaded, as in a real run), a single
sequence of L residues, the first ``MAIN_BLOCKS`` Evoformer blocks, two passes
(the first warms the allocator, the second is timed; the peak is over both, as
in a real run, whose later passes also hold the recycled outputs and the heap
the first pass's numpy work left: at 768 residues in bf16, 2.15 GiB against
1.87 for one pass). A short 16-residue pass first builds every block's
weights in their kernel layouts, as a real run's first pass does. Every
Evoformer block allocates the same, so the activations at the peak of a pass
with two blocks are those of a pass with 48. The main blocks are timed apart
from the rest of the pass and scaled by :mod:`.flops`. About 12 minutes on 2
cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from af2cpu_plugin.atomic import atomic_write_bytes

from . import cost_model, flops

MAIN_BLOCKS = 2
# A real protein's letters (any sequence would do: the cost depends on the length only).
_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEG"
LENGTHS = (256, 512, 768)
# (channel_groups, lengths measured): 1 and 4 at every length; 16 (rarely chosen) at the longest.
GROUP_LENGTHS = {1: LENGTHS, 4: LENGTHS, 16: LENGTHS[-1:]}


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def single_sequence_case(num_res: int, passes: int = 1):
    """(ColabFold's model 3 config, its processed features) for one chain of ``num_res`` residues, no MSA,
    ``passes`` recycling passes with early stop off (also ``bench/memory.py``'s JAX runs)."""
    from af2cpu_plugin.testing import parity

    sequence = (_SEQUENCE * (num_res // len(_SEQUENCE) + 1))[:num_res]
    cfg = parity.colabfold_config("model_3_ptm", passes - 1, msa_depth=1, recycle_early_stop_tolerance=-1.0)
    return cfg, parity.processed_features(cfg, sequence)


def measure(num_res: int, precision: str, groups: int, threads: int, data_dir: str,
            main_blocks: int = MAIN_BLOCKS, passes: int = 2, pair_storage: str = "fp32") -> dict:
    """One pass's peak RSS and time, in this process (call it in a fresh child)."""
    import torch

    torch.set_num_threads(threads)
    from af2cpu_plugin.converters import load_params, nested
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.hooks.colabfold_seam import params_path
    from af2cpu_plugin.runner import CpuRunModel, _to_float16, zero_prev

    cfg, feat = single_sequence_case(num_res, passes)
    runner = CpuRunModel(cfg, nested(load_params(params_path(data_dir, "alphafold2_ptm", 3))),
                         policy=RuntimePolicy(precision=precision, channel_groups=groups, pair_storage=pair_storage))
    # One short pass through all 48 blocks first: every block's weights in their kernel layouts
    # (and the kernels loaded), as in a real run; then only the first blocks at full length.
    _, tiny = single_sequence_case(16)
    runner.forward_pass({k: v[0] for k, v in tiny.items()}, zero_prev(16))
    del runner.model.evoformer.evoformer_iteration[main_blocks:]
    from af2cpu_plugin import kernels
    from af2cpu_plugin.engine import progress

    base = _current_rss()
    live_before = kernels.block_cache_stats().get("live_bytes")  # None without the native block cache
    prev = zero_prev(num_res)
    times, stamps = [], []
    for r in range(passes):
        kernels.block_cache_reset_window_peak()
        stamps.clear()
        start = time.perf_counter()
        with progress.observing(lambda: stamps.append(time.perf_counter())):
            _, prev = runner.forward_pass({k: v[r] for k, v in feat.items()}, prev)
        prev = _to_float16(prev)
        times.append(time.perf_counter() - start)
    cache = kernels.block_cache_stats()
    # A main block's time: between the ends of the last two (the first block of a pass also waits for
    # whatever the pass did before it).
    block = stamps[-1] - stamps[-2] if len(stamps) > 1 else None
    return {"num_res": num_res, "precision": precision, "groups": groups, "pair_storage": pair_storage,
            "passes": passes, "main_blocks": main_blocks,
            "base_bytes": base, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "pass_live_bytes": (cache["window_peak_bytes"] - live_before) if cache else None,
            "seconds": times[-1], "block_seconds": block}


def run_child(num_res: int, precision: str, groups: int, threads: int, data_dir: str,
              main_blocks: int = MAIN_BLOCKS, pair_storage: str = "fp32") -> dict:
    """:func:`measure` in a fresh child process, pinned to this process's CPUs (it inherits the affinity mask)."""
    cmd = [sys.executable, "-m", "af2cpu_plugin.capacity.calibrate", "--child", str(num_res), precision,
           str(groups), str(threads), data_dir, str(main_blocks), pair_storage]
    env = dict(os.environ, JAX_PLATFORMS="cpu", THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE", "1"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"calibration child failed ({num_res} residues, {precision}, {groups} groups, "
                           f"{pair_storage} pair):\n"
                           + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _activation_bytes(row: dict) -> float:
    """The pair-proportional part of a measured peak: the rise of the block cache's live bytes during the
    pass (exact) when it ran, else the RSS rise; the MSA terms and, after the first pass, the recycled pair
    (counted, not fitted) taken off."""
    _, msa, extra = cost_model.tensor_bytes(cost_model.Workload(row["num_res"]))
    live = row.get("pass_live_bytes")
    above = live if live is not None else row["peak_rss_bytes"] - row["base_bytes"]
    prev = cost_model.K_PREV * _pair_bytes(row) if row.get("passes", 2) > 1 else 0.0
    return above - cost_model.K_MSA * msa - cost_model.K_EXTRA * extra - prev


def _pair_bytes(row: dict) -> int:
    return cost_model.tensor_bytes(cost_model.Workload(row["num_res"]))[0]


def _through_origin(x: List[float], y: List[float]) -> float:
    """Least-squares slope of ``y = k·x``: the longest runs, where the pair terms dominate, weigh most."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(x @ y / (x @ x))


def _nnls_fit(columns: List[List[float]], y: List[float]) -> List[float]:
    import numpy as np
    from scipy.optimize import nnls

    return [float(v) for v in nnls(np.array(columns).T, np.array(y))[0]]


def _storage(row: dict) -> str:
    return row.get("pair_storage", "fp32")  # measurements stored before bf16 pair storage existed: fp32


def _key(row: dict) -> str:
    return cost_model.memory_key(row["precision"], _storage(row))


def fit(rows: List[dict], cpu: str, threads: int) -> cost_model.Coefficients:
    """Coefficients from measurements (see :mod:`.cost_model` for the model)."""
    import numpy as np

    # Memory per key: a precision, or "bf16-pair" (bf16 with the pair stored in bf16); time per precision.
    keys = sorted({_key(r) for r in rows})
    k_pair: Dict[str, Dict[int, float]] = {}
    for key in keys:
        for g in sorted({r["groups"] for r in rows if _key(r) == key}):
            points = [r for r in rows if r["groups"] == g and _key(r) == key]
            k_pair.setdefault(key, {})[g] = _through_origin([_pair_bytes(r) for r in points],
                                                            [_activation_bytes(r) for r in points])
    time_fits: Dict[str, Dict[str, float]] = {}
    for precision in sorted({r["precision"] for r in rows}):
        timed = [r for r in rows if _key(r) == precision and r["groups"] == 1 and r.get("block_seconds")]
        if len(timed) < 2:
            continue
        # A main Evoformer block: its matmul work at an achieved rate, plus per-pair-element work.
        inv_rate, per_element = _nnls_fit(
            [[flops.main_block_flops(r["num_res"], 1) for r in timed], [r["num_res"] ** 2 for r in timed]],
            [r["block_seconds"] for r in timed])
        # The rest of the pass (embeddings, extra-MSA stack, structure module, heads) the same way, plus a constant.
        rest_inv_rate, rest_per_element, fixed = _nnls_fit(
            [[flops.pass_flops(r["num_res"], main_blocks=0) for r in timed],
             [r["num_res"] ** 2 * flops.pair_blocks(main_blocks=0) for r in timed], [1.0] * len(timed)],
            [r["seconds"] - r["main_blocks"] * r["block_seconds"] for r in timed])
        time_fits[precision] = {"block_seconds_per_flop": inv_rate, "block_seconds_per_pair_element": per_element,
                                "rest_seconds_per_flop": rest_inv_rate,
                                "rest_seconds_per_pair_element": rest_per_element, "fixed_seconds": fixed}
    # Each channel-group count's time against 1 group, at the same length, in fp32.
    factor = {1: 1.0}
    whole = {r["num_res"]: r["seconds"] for r in rows if r["groups"] == 1 and r["precision"] == "fp32"}
    for g in k_pair.get("fp32", {}):
        ratios = [r["seconds"] / whole[r["num_res"]] for r in rows
                  if g != 1 and r["groups"] == g and r["precision"] == "fp32" and r["num_res"] in whole]
        if ratios:
            factor[g] = float(max(1.0, np.mean(ratios)))
    # The base, per precision: the process before the pass (libraries, weights in their kernel layouts),
    # as measured. (Fitting it as the residual of the peaks instead let the small runs, whose activations
    # fit in blocks the weights' conversion had left in the cache, pull it up: +16% at 600 residues.)
    base = {k: float(np.median([r["base_bytes"] for r in rows if _key(r) == k])) for k in keys}
    fitted = cost_model.Coefficients(base_bytes=base, k_pair=k_pair, time=time_fits, group_time_factor=factor,
                                     slack=0.0, cpu=cpu, threads=threads, calibrated=True)

    def above_model(coefficients):  # each row's peak RSS above what ``coefficients`` predict
        return [r["peak_rss_bytes"] - cost_model.peak_rss(cost_model.Workload(r["num_res"]), r["groups"],
                                                          coefficients, r["precision"], _storage(r),
                                                          r.get("passes", 2)) for r in rows]

    # What the block cache still holds freed at the live peak, as a fraction of the live bytes (within its
    # bound of 1/4): the peak RSS above base + live, over all rows. (``fitted`` has no slack and no
    # outside term yet, so what it predicts is base + live.)
    above = above_model(fitted)
    live = [r["peak_rss_bytes"] - a - base[_key(r)] for r, a in zip(rows, above)]
    slack = min(cost_model.MAX_SLACK, max(0.0, _through_origin(live, above)))
    fitted = dataclasses.replace(fitted, slack=slack)
    # What the peak holds outside the block cache, per pair-sized tensor: the heads' logits and the
    # confidence functions' numpy temporaries at the end of the pass, on top of the blocks the cache
    # keeps mapped from the trunk's peak.
    rest = above_model(fitted)
    k_outside = {}
    for key in keys:
        mine = [i for i, r in enumerate(rows) if _key(r) == key]
        k_outside[key] = max(0.0, _through_origin([_pair_bytes(rows[i]) for i in mine], [rest[i] for i in mine]))
    return dataclasses.replace(fitted, k_outside=k_outside)


def calibrate(threads: int, data_dir: Optional[str] = None, log=print) -> Path:
    """Measure, fit and store this machine's coefficients for ``threads``; returns the file."""
    from af2cpu_plugin.cpu import cpu_info, resolve_precision
    from af2cpu_plugin.random_params import write_random_params

    info = cpu_info()
    data_dir = data_dir or str(cost_model.calibration_dir() / "data")
    log(f"CPU: {info.describe()}; {threads} threads")
    log("random weights for the measurements (model 3; made once)...")
    write_random_params(data_dir, "alphafold2_ptm", models=(3,), seed=0)
    # (length, precision, channel groups, pair storage)
    plan = [(L, "fp32", g, "fp32") for g, lengths in GROUP_LENGTHS.items() for L in lengths]
    if resolve_precision("auto", info) == "bf16":
        plan += [(L, "bf16", 1, "fp32") for L in LENGTHS] + [(LENGTHS[-1], "bf16", 4, "fp32")]
        # The bf16 pair, chosen only where memory is short, hence at long lengths: with 4 groups
        # (what 512 residues and more start from) at every length, 16 at the longest.
        plan += [(L, "bf16", 4, "bf16") for L in LENGTHS] + [(LENGTHS[-1], "bf16", 16, "bf16")]
    rows = []
    for L, precision, groups, storage in plan:
        row = run_child(L, precision, groups, threads, data_dir, pair_storage=storage)
        pair = ", bf16 pair" if storage == "bf16" else ""
        log(f"  {L} residues, {precision}{pair}, {groups} channel group(s): peak RSS "
            f"{row['peak_rss_bytes'] / cost_model.GIB:.2f} GiB, {row['seconds']:.1f} s per pass "
            f"({MAIN_BLOCKS} Evoformer blocks)")
        rows.append(row)
    coefficients = fit(rows, info.calibration_name, threads)
    path = cost_model.save(coefficients)
    atomic_write_bytes(path.with_suffix(".measurements.json"), json.dumps(rows, indent=1).encode())
    log(f"stored {path}")
    return path


def _child_main(argv: Sequence[str]) -> int:
    num_res, precision, groups, threads, data_dir, main_blocks, pair_storage = argv
    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()
    row = measure(int(num_res), precision, int(groups), int(threads), data_dir, int(main_blocks),
                  pair_storage=pair_storage)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=7)
    args = ap.parse_args()
    sys.exit(_child_main(args.child))
