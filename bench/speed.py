"""Speed and memory of --backend cpu against ColabFold's JAX path, in one run.

Both engines get the same processed features (ColabFold's pipeline), the same
random params, the same precision (fp32 by default: ColabFold's
``use_bfloat16=False``) and the same cores: each runs in a fresh child process
pinned to the same CPUs, so its peak RSS is its own. Reports the warm time per
recycle pass (the first pass, which includes XLA compilation, is reported
separately), the ratio and the peak RSS.

    python bench/speed.py                       # 130 residues, single sequence, 3 passes
    python bench/speed.py --length 76 --passes 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys_path_root = str(ROOT)


def _child(engine: str, args: dict, out: "mp.Queue") -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    cpus = sorted(os.sched_getaffinity(0))[: args["threads"]]
    os.sched_setaffinity(0, cpus)
    import sys

    sys.path.insert(0, sys_path_root)
    from bench.parity import case_input
    from af2cpu_plugin.testing import parity

    text = case_input("single130")
    if args["length"]:
        text = text[: args["length"]]
    cfg = parity.colabfold_config("model_3_ptm", args["passes"] - 1, msa_depth=1, recycle_early_stop_tolerance=-1.0)
    feat = parity.processed_features(cfg, text)
    data = Path(args["data"])
    npz = data / "params" / "params_model_3_ptm.npz"
    stamps = []
    if engine == "jax":
        from colabfold.alphafold.models import get_model_haiku_params
        from alphafold.model import model as af_model

        params = get_model_haiku_params(str(data), "alphafold2_ptm", "3", use_fuse=True)
        runner = af_model.RunModel(cfg, params)
    else:
        import torch

        torch.set_num_threads(args["threads"])
        from af2cpu_plugin.converters import load_params, nested
        from af2cpu_plugin.engine.policy import RuntimePolicy
        from af2cpu_plugin.runner import CpuRunModel

        runner = CpuRunModel(cfg, nested(load_params(npz)),
                             policy=RuntimePolicy(precision=args["precision"], threads=args["threads"]))
    start = time.perf_counter()
    runner.predict(feat, callback=lambda res, r: stamps.append(time.perf_counter()))
    passes = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    out.put({"engine": engine, "length": int(feat["aatype"].shape[1]), "first_pass_s": passes[0],
             "warm_pass_s": statistics.median(passes[1:]) if len(passes) > 1 else None,
             "passes_s": passes, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
             "cpus": cpus})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=None, help="crop the 130-residue chain to this length")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--precision", default="fp32", choices=["fp32"])
    ap.add_argument("--engines", default="jax,cpu")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    a = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from af2cpu_plugin.random_params import write_random_params
    from af2cpu_plugin.testing.params_cache import test_cache_root

    data = a.data or test_cache_root() / "bench-data"
    write_random_params(data, "alphafold2_ptm", models=(3,), seed=0)
    ctx = mp.get_context("spawn")
    results = []
    for engine in a.engines.split(","):
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(engine, {"length": a.length, "passes": a.passes, "threads": a.threads,
                                                      "precision": a.precision, "data": str(data)}, q))
        p.start()
        res = q.get()
        p.join()
        results.append(res)
        print(f"{engine}: {res['length']} aa, first pass {res['first_pass_s']:.1f} s, warm pass "
              f"{res['warm_pass_s']:.2f} s, peak RSS {res['peak_rss_gib']:.2f} GiB, cpus {res['cpus']}", flush=True)
    by = {r["engine"]: r for r in results}
    if "jax" in by and "cpu" in by:
        print(f"speed-up cpu vs jax (warm pass): {by['jax']['warm_pass_s'] / by['cpu']['warm_pass_s']:.2f}x; "
              f"peak RSS cpu/jax: {by['cpu']['peak_rss_gib']:.2f}/{by['jax']['peak_rss_gib']:.2f} GiB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"threads": a.threads, "precision": a.precision, "results": results}, indent=2))
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
