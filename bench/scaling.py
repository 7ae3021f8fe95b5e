"""Instance scaling on one node: predictions per hour for 1, 2, 4, 8 ... pinned instances on the same cores.

``bench/throughput.py`` runs whole ``af2cpu batch`` commands on our 2-core
machines; this is its many-core counterpart, for a node where 1 to 8 (or 16)
instances can be compared. It drives the same scheduler that
``af2cpu batch --instances N`` uses (:mod:`af2cpu_plugin.scheduler`: a
``LocalCluster`` of workers pinned to contiguous core groups, longest
prediction first, results through the prediction store) on the features
ColabFold's own pipeline makes. ColabFold's MSA step, feature processing and
output writing run once per batch in the main process and are not in the
times: they are the same for every instance count.

The batch: single-sequence queries of the given lengths, each with
``--seeds`` seeds, model 3 ptm, ``--num-recycle`` recycles (every pass runs),
random weights (the cost does not depend on their values), precision
``auto`` (bf16 where the CPU has native bf16 dot products). For each instance
count a fresh cluster starts and its workers import the engine and load the
kernels (``start_s``, not in the batch time), then the whole batch runs
(``wall_s``). Reported per count: wall time, predictions per hour and per day,
the speed-up over the first count, the achieved model GFLOP/s against the
cores' GEMM peak (one-thread peak times cores, measured in the run), the
workers' summed RSS and PSS at the end, and the largest difference of each prediction from the
one-instance result (coordinates in Å, pLDDT): instances with fewer threads
sum their GEMMs in another order, so agreement is to rounding, not bits.

    python bench/scaling.py --out bench/results/scaling.json
    python bench/scaling.py --save-inputs DIR          # ColabFold's features, for a machine without ColabFold
    python bench/scaling.py --inputs DIR --instances 1,2,4,8,16 --out ...

``--inputs`` needs only torch, numpy, safetensors, dask and the ``alphafold``
package (no JAX, no ColabFold): the features are read from DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENGTHS = (50, 60, 70, 80, 90, 100, 110, 120)
MODEL = ("model_3_ptm", 3)


def _sequence(n: int) -> str:
    from bench.throughput import _SEQUENCE

    return _SEQUENCE[:n]


def save_inputs(directory: Path, lengths, num_recycle: int) -> None:
    """ColabFold's config and processed features for each length, as JSON and npz (no pickle)."""
    from af2cpu_plugin.scheduler.store import PredictionStore, fingerprint
    from af2cpu_plugin.testing import parity

    cfg = parity.colabfold_config(MODEL[0], num_recycle, msa_depth=1, recycle_early_stop_tolerance=-1.0)
    store = PredictionStore(directory)
    queries = []
    for n in lengths:
        feat = parity.processed_features(cfg, _sequence(n))
        fp = fingerprint(feat)
        store.save_features(fp, feat)
        queries.append({"name": f"len{n}", "num_res": n, "fingerprint": fp})
    (directory / "inputs.json").write_text(json.dumps({"config": cfg.to_dict(), "queries": queries}, indent=1,
                                                      default=list))


def load_inputs(directory: Path):
    import ml_collections

    spec = json.loads((directory / "inputs.json").read_text())
    return ml_collections.ConfigDict(spec["config"]), spec["queries"]


def _params_path() -> Path:
    from af2cpu_plugin import converters
    from af2cpu_plugin.random_params import params_file_name
    from af2cpu_plugin.testing.params_cache import cached_random_data_dir

    data = cached_random_data_dir("alphafold2_ptm", models=(MODEL[1],))
    converters.convert_data_dir(data, lambda msg: None)  # once, as `af2cpu convert` would: not timed
    return data / "params" / params_file_name("alphafold2_ptm", MODEL[1])


def _jobs(cfg, queries, seeds: int, passes: int, store_root: Path, params_path: Path, policy):
    from af2cpu_plugin.capacity import cost_model
    from af2cpu_plugin.scheduler.jobs import Job
    from af2cpu_plugin.scheduler.store import prediction_key

    jobs = []
    for q in queries:
        # Single sequence, model 3 (no templates): the cost model's order, as the orchestrator's plan uses.
        seconds = cost_model.estimate(cost_model.Workload(q["num_res"]), policy.precision, 1,
                                      None).seconds_per_pass * passes
        for seed in range(seeds):
            jobs.append(Job(key=prediction_key(q["name"], MODEL[0], seed), prefix=q["name"], model_name=MODEL[0],
                            seed=seed, store_root=str(store_root), params_path=str(params_path), config=cfg,
                            policy=policy, fingerprint=q["fingerprint"], num_res=q["num_res"], cost=seconds))
    return jobs


def _worker_memory(client) -> dict:
    """Summed RSS and PSS of the workers: RSS counts the params' shared page-cache pages once per worker,
    PSS splits them between the workers that map them (the node's real use)."""
    def memory() -> tuple:
        import psutil

        m = psutil.Process().memory_full_info()
        return m.rss, getattr(m, "pss", m.rss)

    sums = [sum(x) for x in zip(*client.run(memory).values())]
    return {"workers_rss_bytes_at_end": sums[0], "workers_pss_bytes_at_end": sums[1]}


def run_count(instances: int, cpus, jobs, inputs: Path, work: Path) -> dict:
    """The whole batch on ``instances`` pinned workers; their results stay under ``work``."""
    from af2cpu_plugin.scheduler import cluster, cores
    from af2cpu_plugin.scheduler.dispatch import Dispatcher
    from af2cpu_plugin.scheduler.worker import warm_up

    store_root = work / f"x{instances}"
    shutil.rmtree(store_root, ignore_errors=True)
    shutil.copytree(inputs, store_root, ignore=shutil.ignore_patterns("inputs.json"))
    jobs = [dataclasses.replace(j, store_root=str(store_root)) for j in jobs]
    groups = cores.split(cpus, instances)
    start = time.perf_counter()
    with cluster.client(groups) as client:
        workers = list(client.scheduler_info()["workers"])
        client.gather([client.submit(warm_up, workers=[w], allow_other_workers=False, pure=False) for w in workers])
        started = time.perf_counter()
        dispatcher = Dispatcher(client)
        dispatcher.submit(jobs)
        dispatcher.drain()
        wall = time.perf_counter() - started
        memory = _worker_memory(client)
    if dispatcher.failed:
        raise RuntimeError(f"{len(dispatcher.failed)} predictions failed: {next(iter(dispatcher.failed.values()))}")
    return {"instances": instances, "threads_per_instance": [len(g) for g in groups], "start_s": started - start,
            "wall_s": wall, "predictions": len(jobs), "predictions_per_hour": len(jobs) / wall * 3600,
            "predictions_per_day": len(jobs) / wall * 86400, **memory, "store": str(store_root)}


def _differences(a_root: Path, b_root: Path, keys) -> dict:
    """Largest |a - b| over the predictions: final atom positions (Å) and pLDDT."""
    import numpy as np

    from af2cpu_plugin.scheduler.store import PredictionStore

    a, b = PredictionStore(a_root), PredictionStore(b_root)
    worst = {"positions_A": 0.0, "plddt": 0.0}
    for key in keys:
        ra, rb = a.load_result(key)[0], b.load_result(key)[0]
        pa = np.asarray(ra["structure_module"]["final_atom_positions"], np.float32)
        pb = np.asarray(rb["structure_module"]["final_atom_positions"], np.float32)
        worst["positions_A"] = max(worst["positions_A"], float(np.abs(pa - pb).max()))
        worst["plddt"] = max(worst["plddt"], float(np.abs(np.asarray(ra["plddt"], np.float32)
                                                           - np.asarray(rb["plddt"], np.float32)).max()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default=None, help="instance counts, e.g. 1,2,4,8 (default: 1, 2, 4 ... up to "
                    "one per core)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--seeds", type=int, default=4, help="seeds per query (predictions = lengths x seeds)")
    ap.add_argument("--num-recycle", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--inputs", default=None, help="read ColabFold's features from here (see --save-inputs)")
    ap.add_argument("--save-inputs", default=None, help="write ColabFold's features here and stop")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]

    if args.save_inputs:
        save_inputs(Path(args.save_inputs), lengths, args.num_recycle)
        print(f"inputs for lengths {lengths} in {args.save_inputs}")
        return 0

    import torch

    from af2cpu_plugin.cpu import cpu_info, resolve_precision
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.scheduler.cores import usable_cpus
    from af2cpu_plugin.hooks.cpu_backend import resolve_kernels
    from af2cpu_plugin.capacity.flops import pass_flops
    from bench.flops import gemm_peak
    from bench.timing import write_json

    cpus = usable_cpus()
    info = cpu_info()
    t = time.perf_counter()
    kernels = resolve_kernels("auto")  # builds the native kernels once, here, before any worker loads them
    print(f"CPU: {info.describe()}; {len(cpus)} usable cores; torch {torch.__version__}; {kernels} kernels "
          f"({time.perf_counter() - t:.0f} s to load)", flush=True)
    counts = ([int(x) for x in args.instances.split(",")] if args.instances
              else sorted({min(2**i, len(cpus)) for i in range(len(cpus).bit_length() + 1)}))

    work = Path(tempfile.mkdtemp(prefix="af2cpu-scaling-"))
    inputs = Path(args.inputs) if args.inputs else work / "inputs"
    if not args.inputs:
        save_inputs(inputs, lengths, args.num_recycle)
    cfg, queries = load_inputs(inputs)
    queries = [q for q in queries if q["num_res"] in lengths] or queries
    policy = RuntimePolicy(precision=resolve_precision(args.precision), kernels=kernels)
    passes = int(cfg.model.num_recycle) + 1
    jobs = _jobs(cfg, queries, args.seeds, passes, inputs, _params_path(), policy)
    dtype = torch.bfloat16 if policy.precision == "bf16" else torch.float32
    peak_all = gemm_peak(dtype)
    torch.set_num_threads(1)
    peak_one = gemm_peak(dtype)
    torch.set_num_threads(len(cpus))
    batch_flops = sum(pass_flops(j.num_res) * passes for j in jobs)
    print(f"{policy.precision} GEMM peak: {peak_all:.0f} GFLOP/s on {len(cpus)} threads in one process, "
          f"{peak_one:.0f} on one thread ({peak_one * len(cpus):.0f} x {len(cpus)} cores)", flush=True)
    print(f"{len(jobs)} predictions ({len(queries)} queries of {[q['num_res'] for q in queries]} residues x "
          f"{args.seeds} seeds, {passes} passes each), {policy.precision}", flush=True)

    result = {"cpu": info.describe(), "torch": torch.__version__, "cpus": cpus, "kernels": kernels,
              "precision": policy.precision,
              "lengths": [q["num_res"] for q in queries], "seeds": args.seeds,
              "num_recycle": int(cfg.model.num_recycle), "gemm_peak_gflops_all_threads": peak_all,
              "gemm_peak_gflops_one_thread": peak_one, "batch_model_flops": batch_flops, "rows": []}
    out = Path(args.out)
    try:
        for n in counts:
            row = run_count(n, cpus, jobs, inputs, work)
            base = result["rows"][0] if result["rows"] else row
            row["speedup_vs_first"] = base["wall_s"] / row["wall_s"]
            row["achieved_gflops"] = batch_flops / row["wall_s"] / 1e9
            # Of the ceiling where every core runs GEMMs of its own at the one-thread peak.
            row["of_cores_gemm_peak"] = row["achieved_gflops"] / (peak_one * len(cpus))
            row["max_difference_vs_first"] = _differences(Path(base["store"]), Path(row["store"]),
                                                          [j.key for j in jobs])
            result["rows"].append(row)
            print(f"{n:3d} x {row['threads_per_instance'][0]:2d} threads  start {row['start_s']:5.1f} s  "
                  f"batch {row['wall_s']:7.1f} s  {row['predictions_per_hour']:8.0f}/h  "
                  f"{row['predictions_per_day']:8.0f}/day  {row['speedup_vs_first']:5.2f}x  "
                  f"{row['achieved_gflops']:5.0f} GFLOP/s ({row['of_cores_gemm_peak']:.0%} of the cores' peak)  "
                  f"workers {row['workers_pss_bytes_at_end'] / 2**30:5.2f} GiB  "
                  f"max diff {row['max_difference_vs_first']['positions_A']:.3f} A, "
                  f"{row['max_difference_vs_first']['plddt']:.3f} pLDDT", flush=True)
            write_json(out, result)  # after every count: a run cut short keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in result["rows"]:
        row.pop("store", None)
    write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
