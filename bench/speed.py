"""Speed and memory of --backend cpu against ColabFold's JAX path, side by side in one run.

Every engine gets the same random params (model 3 ptm), the same processed
features (ColabFold's pipeline, ``bench/cases.py``) and the same cores: each
runs in a fresh child process pinned to the same CPUs, so its times and peak
RSS are its own. Per case and engine it prints the first pass (JAX: includes
XLA compilation), the warm pass (median of the later passes), the ratios to
JAX's default (bf16) and to JAX fp32, the peak RSS, and the achieved matmul
GFLOP/s (the pass's GEMM work, counted once, over the warm pass time) as a
share of this machine's oneDNN GEMM peak for the engine's precision,
measured in the same run on the same cores.

    python bench/speed.py                                   # every case and engine, 2 passes
    python bench/speed.py --cases single200 --engines jax,cpu_bf16 --passes 3
    python bench/speed.py --e2e                             # also af2cpu batch --num-models 5, both backends

Engines: ``jax`` (ColabFold's default, bf16), ``jax_fp32``, ``cpu_fp32``,
``cpu_bf16`` (only on a CPU with native bf16), ``ipex`` (the cpu engine in
the IPEX venv, ``scripts/setup-ipex.sh``; only when that venv exists). The
cpu engines use the kernels ``af2cpu batch`` picks on this machine (native
where it can, see ``kernels`` in the JSON); ``cpu_fp32_stock`` and
``cpu_bf16_stock`` (not run by default) pin PyTorch's kernels for an A/B.
Writes ``bench/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IPEX_PYTHON = ROOT / ".venv-ipex" / "bin" / "python"
ALL_ENGINES = ("jax", "jax_fp32", "cpu_fp32", "cpu_bf16", "ipex")
DEFAULT_CASES = ("single100", "single200", "single400", "deep_msa", "deep_msa_x3")


# ---------------------------------------------------------------------------
# child: one engine, one case, in its own pinned process
# ---------------------------------------------------------------------------


def _child(engine: str, case: str, passes: int, cpus: list, data: str, count_flops: bool) -> dict:
    os.sched_setaffinity(0, cpus)
    sys.path.insert(0, str(ROOT))
    from af2cpu_plugin.cli import _setup_environment

    _setup_environment()  # what `af2cpu batch` sets before torch or jax load
    from bench.cases import case_features, case_model
    from af2cpu_plugin.hooks.colabfold_seam import params_path

    cfg, feat = case_features(case, passes)
    model_type, model_number = case_model(case)
    multimer = "multimer" in model_type
    npz = params_path(data, model_type, model_number)
    flops = None
    if engine.startswith("jax"):
        from alphafold.model import model as af_model
        from colabfold.alphafold.models import get_model_haiku_params

        cfg.model.global_config.bfloat16 = engine == "jax"
        runner = af_model.RunModel(cfg, get_model_haiku_params(data, model_type, str(model_number), use_fuse=True))
    else:
        import torch

        torch.set_num_threads(len(cpus))
        from af2cpu_plugin.converters import load_params, nested
        from af2cpu_plugin.engine.policy import RuntimePolicy
        from af2cpu_plugin.runner import CpuRunModel

        from af2cpu_plugin.hooks.cpu_backend import resolve_kernels

        kernels = "ipex" if engine == "ipex" else "stock" if engine.endswith("_stock") else resolve_kernels("auto")
        policy = RuntimePolicy(precision="bf16" if engine.startswith("cpu_bf16") or engine == "ipex" else "fp32",
                               threads=len(cpus), kernels=kernels)
        runner = CpuRunModel(cfg, nested(load_params(npz)), policy=policy)
    stamps = []
    start = time.perf_counter()
    runner.predict(feat, callback=lambda res, r: stamps.append(time.perf_counter()))
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if count_flops and not engine.startswith("jax"):
        # The model's matmul work, counted once on an extra (untimed) pass.
        from bench.flops import MatmulFlops
        from af2cpu_plugin.runner import zero_prev

        from af2cpu_plugin.engine.multimer import rng

        sub = {**feat, "random_key": rng.pass_keys(0, 1)[0]} if multimer else {k: v[0] for k, v in feat.items()}
        with MatmulFlops() as counter:
            runner.forward_pass(sub, zero_prev(feat["aatype"].shape[0 if multimer else 1]))
        flops = counter.total
    if multimer:
        rows = int(feat["msa"].shape[0])
        length, clusters, extra = int(feat["aatype"].shape[0]), min(rows, 508), max(0, min(rows - 508, 2048))
    else:
        length = int(feat["aatype"].shape[1])
        clusters, extra = int(feat["msa_feat"].shape[1]), int(feat["extra_msa"].shape[1])
    return {"engine": engine, "case": case, "model": npz.stem.replace("params_", ""), "length": length,
            "msa_clusters": clusters, "extra_msa": extra,
            "first_pass_s": times[0], "warm_pass_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "passes_s": times, "peak_rss_gib": rss, "cpus": cpus, "matmul_flops": flops,
            "kernels": None if engine.startswith("jax") else policy.kernels}


def _peak_child(cpus: list) -> dict:
    os.sched_setaffinity(0, cpus)
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(len(cpus))
    from bench.flops import gemm_peak
    from af2cpu_plugin.cpu import cpu_info

    info = cpu_info()
    out = {"cpu": info.describe(), "model": info.model, "capability": info.capability,
           "native_bf16": info.native_bf16, "torch": torch.__version__,
           "fp32_gflops": gemm_peak(torch.float32)}
    # Emulated bf16 (no avx512_bf16/AMX) is two orders of magnitude slower: measured briefly, never used.
    out["bf16_gflops"] = gemm_peak(torch.bfloat16, n=2048 if info.native_bf16 else 512,
                                   seconds=1.5 if info.native_bf16 else 0.2)
    return out


def _run_child(python: Path, payload: dict) -> dict:
    """Run this file as a child with ``payload``; its last stdout line is the JSON result."""
    proc = subprocess.run([str(python), __file__, "--child", json.dumps(payload)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"child {payload} failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# end to end: af2cpu batch --num-models 5 on both backends
# ---------------------------------------------------------------------------


def end_to_end(cpus: list, data: Path, case: str, out_root: Path) -> list:
    """Wall time of ``af2cpu batch --num-models 5`` on a single-sequence case, ColabFold's other
    defaults (3 recycles, early stop) and each backend's default precision, pinned to ``cpus``."""
    import shutil

    from bench.cases import case_text
    from af2cpu_plugin.random_params import write_random_params

    write_random_params(data, "alphafold2_ptm", models=(1, 2, 3, 4, 5), seed=0, method="haiku")
    from af2cpu_plugin import converters

    converters.convert_data_dir(data, lambda msg: None)  # once, as `af2cpu convert` would: not part of the timing
    out_root.mkdir(parents=True, exist_ok=True)
    fasta = out_root / f"{case}.fasta"
    fasta.write_text(f">{case}\n{case_text(case)}\n")
    rows = []
    for backend in ("jax", "cpu"):
        out = out_root / f"e2e-{backend}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "af2cpu_plugin", "batch",
               "--backend", backend, "--msa-mode", "single_sequence", "--data", str(data),
               "--num-models", "5", str(fasta), str(out)]
        if backend == "cpu":
            cmd[cmd.index("--backend") + 2:cmd.index("--backend") + 2] = ["--threads", str(len(cpus))]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        config = json.loads((out / "config.json").read_text())
        rows.append({"backend": backend, "case": case, "precision": config.get("precision"), "wall_s": wall,
                     "command": " ".join(cmd[3:])})
        print(f"e2e {backend} ({config.get('precision')}): {wall:.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------


def _fmt(x, spec, unit=""):
    return "—" if x is None else format(x, spec) + unit


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        payload = json.loads(sys.argv[2])
        result = _peak_child(payload["cpus"]) if payload.get("peak") else _child(**payload)
        print(json.dumps(result))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES))
    ap.add_argument("--engines", default=",".join(ALL_ENGINES))
    ap.add_argument("--passes", type=int, default=2, help="recycling passes per engine (first + warm)")
    ap.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--e2e", action="store_true", help="also time af2cpu batch --num-models 5 on both backends")
    ap.add_argument("--e2e-case", default="single100", help="single-sequence case for --e2e")
    ap.add_argument("--flops-from", type=Path, default=None,
                    help="reuse the matmul FLOP counts of an earlier speed JSON (same cases and engines) "
                         "instead of counting them on an extra pass")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    a = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(ROOT))
    from af2cpu_plugin.random_params import write_random_params
    from af2cpu_plugin.testing.params_cache import test_cache_root

    data = a.data or test_cache_root() / "bench-data"
    from af2cpu_plugin.capacity.flops import haiku_order_extra_flops
    from bench.cases import MULTIMER_CASES, case_model

    for model_type, model_number in sorted({case_model(c) for c in a.cases.split(",") if c}):
        write_random_params(data, model_type, models=(model_number,), seed=0, method="haiku")
    cpus = sorted(os.sched_getaffinity(0))[: a.threads]
    peak = _run_child(Path(sys.executable), {"peak": True, "cpus": cpus})
    print(f"CPU: {peak['cpu']}\ntorch {peak['torch']}; {len(cpus)} threads on CPUs {cpus}; oneDNN GEMM peak: "
          f"fp32 {peak['fp32_gflops']:.0f} GFLOP/s, bf16 {peak['bf16_gflops']:.1f} GFLOP/s"
          f"{'' if peak['native_bf16'] else ' (emulated: cpu_bf16 skipped)'}", flush=True)
    engines = [e for e in a.engines.split(",") if e]
    if not peak["native_bf16"]:
        engines = [e for e in engines if not e.startswith("cpu_bf16")]
    if "ipex" in engines and not IPEX_PYTHON.exists():
        print(f"ipex: skipped ({IPEX_PYTHON} not found; make it with scripts/setup-ipex.sh)")
        engines.remove("ipex")

    known_flops = {}
    if a.flops_from:
        for r in json.loads(a.flops_from.read_text())["results"]:
            known_flops[(r["case"], r["engine"])] = r.get("matmul_flops")
    results = []

    def save(e2e=None):
        """Written after every case, so that a later case's failure loses nothing measured."""
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"machine": peak, "threads": len(cpus), "passes": a.passes, "results": results,
                                   "end_to_end": e2e}, indent=2))
        os.replace(tmp, a.out)

    for case in [c for c in a.cases.split(",") if c]:
        rows = []
        for engine in engines:
            python = IPEX_PYTHON if engine == "ipex" else Path(sys.executable)
            known = known_flops.get((case, engine))
            res = _run_child(python, {"engine": engine, "case": case, "passes": a.passes, "cpus": cpus,
                                      "data": str(data), "count_flops": known is None})
            res["matmul_flops"] = res["matmul_flops"] or known
            rows.append(res)
            print(f"  {case} {engine}: first {res['first_pass_s']:.1f} s, warm {_fmt(res['warm_pass_s'], '.2f')} s, "
                  f"peak RSS {res['peak_rss_gib']:.2f} GiB", flush=True)
        by = {r["engine"]: r for r in rows}
        # Each cpu engine keeps its own count. JAX runs haiku's order of the outer product mean, which
        # the engine replaces for shallow MSAs by a cheaper one (capacity.flops), so JAX's work is a cpu
        # count plus that difference (monomer cases; multimer's MSAs are deep).
        counted = next((r["matmul_flops"] for r in rows if r["engine"] == "cpu_fp32"), None) or next(
            (r["matmul_flops"] for r in rows if r["matmul_flops"]), None)
        first = rows[0]
        reference = counted and counted + (0 if case in MULTIMER_CASES else haiku_order_extra_flops(
            first["length"], first["msa_clusters"], first["extra_msa"]))
        for r in rows:
            r["matmul_flops"] = r["matmul_flops"] or (reference if r["engine"].startswith("jax") else counted)
            flops = r["matmul_flops"]
            warm = r["warm_pass_s"]
            for ref in ("jax", "jax_fp32"):
                if ref in by and warm and by[ref]["warm_pass_s"]:
                    r[f"warm_speedup_vs_{ref}"] = by[ref]["warm_pass_s"] / warm
            # XLA's CPU dots compute in fp32 whatever the storage (ColabFold's bf16 is no faster), so JAX's
            # default is held to the fp32 peak too; on a CPU that emulates bf16 that peak is meaningless.
            bf16 = r["engine"] == "ipex" or r["engine"].startswith("cpu_bf16")
            r["gemm_peak_gflops"] = peak["bf16_gflops" if bf16 else "fp32_gflops"]
            if flops and warm:
                r["achieved_gflops"] = flops / warm / 1e9
                r["share_of_gemm_peak"] = r["achieved_gflops"] / r["gemm_peak_gflops"]
        results.extend(rows)
        save()
        print(f"\n### {case}: {first['length']} residues, {first['msa_clusters']} clusters, {first['extra_msa']} extra; "
              f"matmul work {_fmt(reference and reference / 1e12, '.2f')} TFLOP/pass in haiku's order "
              f"({_fmt(counted and counted / 1e12, '.2f')} as the cpu engine orders it)")
        print("| engine | first pass (s) | warm pass (s) | vs JAX default | vs JAX fp32 | peak RSS (GiB) "
              "| matmul GFLOP/s (share of GEMM peak) |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['engine']} | {r['first_pass_s']:.1f} | {_fmt(r['warm_pass_s'], '.2f')} "
                  f"| {_fmt(r.get('warm_speedup_vs_jax'), '.2f', 'x')} | {_fmt(r.get('warm_speedup_vs_jax_fp32'), '.2f', 'x')} "
                  f"| {r['peak_rss_gib']:.2f} | {_fmt(r.get('achieved_gflops'), '.0f')} "
                  f"({_fmt(r.get('share_of_gemm_peak'), '.0%')}) |")
        print(flush=True)

    e2e = end_to_end(cpus, data, a.e2e_case, ROOT / "out" / "bench") if a.e2e else None
    if e2e:
        by = {r["backend"]: r for r in e2e}
        print(f"end to end, --num-models 5: jax {by['jax']['wall_s']:.1f} s, cpu {by['cpu']['wall_s']:.1f} s "
              f"({by['jax']['wall_s'] / by['cpu']['wall_s']:.2f}x)")
    save(e2e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
