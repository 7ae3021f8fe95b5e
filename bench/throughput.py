"""Throughput of whole batches: predictions per hour and per day, one instance against several, and ColabFold-JAX.

A batch as a lab runs it: 8 single-sequence queries of mixed lengths
(50-300 residues) and one query with ``--num-seeds 8`` (the ColabFold#826
case: many predictions of one protein). Each configuration runs the whole
batch through the CLI in a fresh process tree pinned to the same CPUs, with
random weights (the cost does not depend on their values):

* ``jax``: ``--backend jax`` with ColabFold's defaults, as ``colabfold_batch`` runs it (one process, XLA
  compiles per padded length);
* ``cpu 1x<n>``: ``--backend cpu``, one instance with every thread (``--instances 1``);
* ``cpu <n>x1``: ``--backend cpu --instances <n>``, one single-thread instance per core.

The cpu runs use ``--precision auto`` (bf16 where the CPU has native bf16
dot products, else fp32). Reported per configuration: wall time of the whole
batch, predictions per hour and per day, the ratio to JAX, the peak RSS of
the process tree (sampled), and whether the output directory equals the
single-instance one (every file but ``log.txt`` and ``config.json``).
``--num-models`` and ``--num-recycle`` default to 1 and 1 to keep a run
under an hour on 2 cores; a prediction is then 2 passes.

    python bench/throughput.py                       # writes bench/results/throughput.json
    python bench/throughput.py --configs cpu1,cpuN   # skip JAX
    python bench/throughput.py --configs cpu1,cpuN --lengths 50,60,70,80,90,100,110,120 --seeds 32 \
        --out bench/results/throughput_short.json      # short queries: where instances pay
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A real protein's letters, cut to each length (the cost depends on the length only).
_SEQUENCE = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEG"
             "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGY"
             "VQERTIFFKDDGNYKTRAEVKFEGDTLVNRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHNIEDGSVQLADHYQQ"
             "NTPIGDGPVLLPDNHYLSTQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK")
LENGTHS = (50, 80, 110, 140, 170, 200, 250, 300)
SEEDS_QUERY = ("seeds100", 100, 8)


def _fasta(path: Path, lengths) -> None:
    path.write_text("".join(f">len{n}\n{_SEQUENCE[:n]}\n" for n in lengths))


class _TreeRSS:
    """Peak summed RSS of a process and its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _batch(cmd_tail: list, fasta: Path, out: Path, cpus: list, log_path: Path) -> dict:
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "af2cpu_plugin", "batch",
           *cmd_tail, str(fasta), str(out)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        rss = _TreeRSS(proc.pid)
        proc.wait()
        peak = rss.stop()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log_path}")
    return {"wall_s": wall, "peak_rss_bytes": peak, "command": " ".join(cmd[3:])}


def _same_outputs(a: Path, b: Path) -> bool:
    def files(d: Path) -> dict:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*")
                if p.is_file() and p.name not in ("log.txt", "config.json")}

    return files(a) == files(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="jax,cpu1,cpuN", help="jax, cpu1 (1 instance x all threads), "
                    "cpuN (one instance per core)")
    ap.add_argument("--num-models", type=int, default=1)
    ap.add_argument("--num-recycle", type=int, default=1)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--seeds", type=int, default=SEEDS_QUERY[2], help="--num-seeds of the 100-residue query")
    ap.add_argument("--data", default=None, help="params dir (default: random weights, made once)")
    ap.add_argument("--keep", default=None, help="keep the output directories here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput.json"))
    args = ap.parse_args(argv)

    from af2cpu_plugin.cpu import cpu_info
    from af2cpu_plugin.scheduler.cores import usable_cpus

    cpus = usable_cpus()
    info = cpu_info()
    print(f"CPU: {info.describe()}; {len(cpus)} usable cores {cpus}", flush=True)
    if args.data:
        data = Path(args.data)
    else:
        from af2cpu_plugin.testing.params_cache import cached_random_data_dir

        data = cached_random_data_dir("alphafold2_ptm", models=(1, 2, 3, 4, 5))
    from af2cpu_plugin import converters

    converters.convert_data_dir(data, lambda msg: None)  # once, as `af2cpu convert` would: not timed

    work = Path(args.keep or tempfile.mkdtemp(prefix="af2cpu-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    main_fasta, seeds_fasta = work / "batch.fasta", work / "seeds.fasta"
    _fasta(main_fasta, lengths)
    seeds_fasta.write_text(f">{SEEDS_QUERY[0]}\n{_SEQUENCE[:SEEDS_QUERY[1]]}\n")
    predictions = len(lengths) * args.num_models + args.seeds * args.num_models
    common = ["--msa-mode", "single_sequence", "--data", str(data), "--num-models", str(args.num_models),
              "--num-recycle", str(args.num_recycle)]
    configs = {"jax": ["--backend", "jax"],
               "cpu1": ["--backend", "cpu", "--instances", "1", "--threads", str(len(cpus))],
               "cpuN": ["--backend", "cpu", "--instances", str(len(cpus))]}
    names = {"jax": "ColabFold-JAX (colabfold_batch defaults)", "cpu1": f"cpu 1x{len(cpus)} threads",
             "cpuN": f"cpu {len(cpus)}x1 thread"}
    rows = []
    for name in args.configs.split(","):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        # The batch and the seeds query as two runs into one directory (ColabFold takes one --num-seeds).
        first = _batch(configs[name] + common, main_fasta, out, cpus, work / f"{name}.batch.log")
        second = _batch(configs[name] + common + ["--num-seeds", str(args.seeds)], seeds_fasta, out, cpus,
                        work / f"{name}.seeds.log")
        wall = first["wall_s"] + second["wall_s"]
        precision = json.loads((out / "config.json").read_text()).get("precision")
        row = {"config": name, "label": names[name], "precision": precision, "predictions": predictions,
               "wall_s": wall, "batch_wall_s": first["wall_s"], "seeds_wall_s": second["wall_s"],
               "predictions_per_hour": predictions / wall * 3600, "predictions_per_day": predictions / wall * 86400,
               "peak_rss_bytes": max(first["peak_rss_bytes"], second["peak_rss_bytes"])}
        rows.append(row)
        print(f"{names[name]:42s} {precision or '':5s} {wall:8.1f} s  {row['predictions_per_hour']:7.1f}/h  "
              f"{row['predictions_per_day']:8.0f}/day  peak {row['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    by = {r["config"]: r for r in rows}
    if "cpu1" in by and "cpuN" in by:
        by["cpuN"]["same_outputs_as_cpu1"] = _same_outputs(work / "cpu1", work / "cpuN")
        print(f"cpu {len(cpus)}x1 vs 1x{len(cpus)}: {by['cpu1']['wall_s'] / by['cpuN']['wall_s']:.2f}x, "
              f"outputs identical: {by['cpuN']['same_outputs_as_cpu1']}")
    if "jax" in by:
        for r in rows:
            r["speedup_vs_jax"] = by["jax"]["wall_s"] / r["wall_s"]
            print(f"{r['label']:42s} {r['speedup_vs_jax']:.2f}x JAX")
    result = {"cpu": info.describe(), "cpus": cpus, "lengths": lengths,
              "seeds_query": [SEEDS_QUERY[0], SEEDS_QUERY[1], args.seeds],
              "num_models": args.num_models, "num_recycle": args.num_recycle, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
