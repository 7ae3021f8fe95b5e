"""Peak RSS and time of one pass against sequence length: cpu fp32, cpu bf16 and ColabFold's JAX path.

``cpu_bf16`` stores the pair as the runner would under the memory limit
(fp32 unless it does not fit); ``cpu_bf16_pair`` always stores it in bf16,
what the runner turns to where memory is short.

Single sequence, model 3 ptm with random weights, one recycling pass, each
engine and length in a fresh child process pinned to the same CPUs. Next to
each cpu row the cost model's prediction (``af2cpu calibrate``'s
coefficients for this machine, else the built-in ones) and its error.

Long passes take hours on 2 cores, and every Evoformer block allocates the
same, so ``--blocks N`` runs only the first N of the 48 Evoformer blocks
(all weights loaded, the 4 extra-MSA blocks, structure module and heads
whole): the activations at the peak are the full pass's, the time is not
(the table says which). It is one pass: a run of several passes peaks a
little higher (the recycled pair, float16, is held through every later pass),
so the prediction printed beside each row is the cost model's for one pass
(``passes=1``: without the recycled pair). JAX then runs an N-block model, whose weights are smaller than the
full model's by (48 - N) blocks (about 7 MiB each): its peak is, if anything,
understated. JAX is run up to ``--jax-max`` residues (its peak grows as
about 5.9e-6 GiB·L²: 24 GB is reached near 1,900).

    python bench/memory.py --lengths 200,600,1000,1500 --blocks 2
    python bench/memory.py --lengths 3000 --engines cpu_fp32 --blocks 1

Prints a markdown table, writes bench/results/memory.json (merged with
earlier runs by engine and length) and bench/results/memory.png.
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

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
ENGINES = ("cpu_fp32", "cpu_bf16", "cpu_bf16_pair", "jax")


def _jax_child(num_res: int, blocks: int, data: str) -> dict:
    import jax
    import numpy as np
    from alphafold.model import model as af_model
    from colabfold.alphafold.models import get_model_haiku_params

    from af2cpu_plugin.capacity.calibrate import single_sequence_case

    cfg, feat = single_sequence_case(num_res)
    cfg.model.embeddings_and_evoformer.evoformer_num_block = blocks
    params = get_model_haiku_params(data, "alphafold2_ptm", "3", use_fuse=True)
    stack = "alphafold/alphafold_iteration/evoformer/evoformer_iteration"
    params = {scope: ({k: v[:blocks] for k, v in arrays.items()} if scope.startswith(stack) else arrays)
              for scope, arrays in params.items()}
    runner = af_model.RunModel(cfg, params)
    L = num_res
    batch = {k: v[0][None] for k, v in feat.items()}
    batch["prev"] = {"prev_msa_first_row": np.zeros((L, 256), np.float32),
                     "prev_pair": np.zeros((L, L, 128), np.float32), "prev_pos": np.zeros((L, 37, 3), np.float32)}
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    compiled = jax.jit(runner.apply).lower(runner.params, key, batch).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = compiled(runner.params, key, batch)
    jax.block_until_ready(out)
    return {"seconds": time.perf_counter() - start, "compile_seconds": compile_s,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "channel_groups": None}


def _child(engine: str, num_res: int, blocks: int, groups: int, threads: int, data: str,
           pair_storage: str = "fp32") -> dict:
    sys.path.insert(0, str(ROOT))
    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()
    if engine == "jax":
        return _jax_child(num_res, blocks, data)
    from af2cpu_plugin.capacity.calibrate import measure

    row = measure(num_res, engine.split("_")[1], groups, threads, data, main_blocks=blocks, passes=1,
                  pair_storage=pair_storage)
    # base (the process before the pass) and the block cache's live bytes during it: what the cost
    # model's terms are fitted to, so that a row's error can be traced to one of them.
    return {"seconds": row["seconds"], "peak_rss_bytes": row["peak_rss_bytes"], "channel_groups": groups,
            "pair_storage": pair_storage, "base_bytes": row["base_bytes"], "pass_live_bytes": row["pass_live_bytes"]}


def _run(engine, num_res, blocks, groups, threads, data, pair_storage="fp32") -> dict:
    payload = json.dumps([engine, num_res, blocks, groups, threads, data, pair_storage])
    # The child inherits this process's affinity mask: every engine runs on the same CPUs.
    proc = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _chart(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for engine, style in (("cpu_fp32", "o-"), ("cpu_bf16", "s-"), ("cpu_bf16_pair", "d-"), ("jax", "^--")):
        pts = sorted((r["length"], r["peak_rss_bytes"] / GIB) for r in rows
                     if r["engine"] == engine and "peak_rss_bytes" in r)
        if pts:
            ax.plot(*zip(*pts), style, label={"jax": "ColabFold JAX", "cpu_bf16_pair": "cpu bf16, bf16 pair"}.get(
                engine, engine.replace("_", " ")))
    ax.axhline(22, color="grey", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[0], 22.3, "22 GiB", color="grey", fontsize=8)
    ax.set_xlabel("residues (single sequence)")
    ax.set_ylabel("peak RSS of one pass (GiB)")
    cpu = rows[0].get("cpu", "").split(" | ")
    ax.set_title(f"{cpu[0]}, {cpu[1] if len(cpu) > 1 else ''}; one pass, first "
                 f"{min(r['blocks'] for r in rows)}-{max(r['blocks'] for r in rows)} of 48 Evoformer blocks", fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(*json.loads(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="200,600,1000,1500")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--blocks", type=int, default=48, help="Evoformer blocks run (of 48): see above")
    ap.add_argument("--jax-max", type=int, default=1500, help="longest length JAX is run at")
    ap.add_argument("--memory-limit", default=None,
                    help="the limit the cpu engine plans its chunking for (default: this machine's)")
    ap.add_argument("--data", default=None, help="data dir with random params (made if absent)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from af2cpu_plugin.capacity import cost_model
    from af2cpu_plugin.capacity.limits import memory_limit
    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.random_params import write_random_params
    from af2cpu_plugin.testing.params_cache import test_cache_root

    cpus = sorted(os.sched_getaffinity(0))
    threads = len(cpus)
    data = args.data or str(test_cache_root() / "bench-data")
    write_random_params(data, "alphafold2_ptm", models=(3,), seed=0, method="haiku")
    info = cpu_info()
    limit = memory_limit(args.memory_limit)
    coefficients = cost_model.load(threads=threads)  # this CPU's calibration, else its built-ins
    print(f"CPU: {info.describe()}; {threads} threads; memory limit {limit.bytes / GIB:.1f} GiB ({limit.source}); "
          f"cost model: {'calibrated here' if coefficients.calibrated else 'built-in coefficients'}", flush=True)
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        for engine in args.engines.split(","):
            if engine.startswith("cpu_bf16") and not info.native_bf16:
                continue
            if engine == "jax" and L > args.jax_max:
                continue
            est = None
            groups, storage = 1, "fp32"
            if engine != "jax":
                work = cost_model.Workload(L)
                precision = engine.split("_")[1]
                est = cost_model.estimate(work, precision, threads, limit.bytes, coefficients, passes=1)
                groups, storage = est.channel_groups, est.pair_storage
                if engine == "cpu_bf16_pair":  # the bf16 pair whether or not memory needs it
                    storage = "bf16"
                    est = dataclasses.replace(est, pair_storage=storage, peak_rss_bytes=cost_model.peak_rss(
                        work, groups, coefficients, precision, storage, passes=1))
            row = {"engine": engine, "length": L, "blocks": args.blocks, "cpu": info.describe(),
                   **_run(engine, L, args.blocks, groups, threads, data, storage)}
            if est is not None and "peak_rss_bytes" in row:
                row["predicted_peak_rss_bytes"] = est.peak_rss_bytes
                row["predicted_seconds_full_pass"] = est.seconds_per_pass
                row["peak_error"] = est.peak_rss_bytes / row["peak_rss_bytes"] - 1
            rows.append(row)
            if "failed" in row:
                print(f"| {engine} | {L} | failed: {row['failed']} |", flush=True)
                continue
            pred = (f"{row['predicted_peak_rss_bytes'] / GIB:.2f} GiB ({row['peak_error']:+.0%}), full pass "
                    f"{row['predicted_seconds_full_pass']:.0f} s" if est is not None else "—")
            pair = ", bf16 pair" if row.get("pair_storage") == "bf16" else ""
            print(f"| {engine} | {L} | groups {row['channel_groups'] or '—'}{pair} | peak {row['peak_rss_bytes'] / GIB:.2f} GiB "
                  f"| {row['seconds']:.1f} s ({args.blocks} blocks) | predicted {pred} |", flush=True)
    path = args.out_dir / "memory.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keep = [r for r in old if (r["engine"], r["length"]) not in {(r2["engine"], r2["length"]) for r2 in rows}]
    merged = sorted(keep + rows, key=lambda r: (r["engine"], r["length"]))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    os.replace(tmp, path)
    _chart(merged, args.out_dir / "memory.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
