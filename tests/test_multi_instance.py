"""Multi-instance runs (`af2cpu batch --instances N`, `--scheduler ADDRESS`): the scheduler package and the
two-pass seam. The end-to-end runs compare a multi-instance output directory with the single-instance one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from af2cpu_plugin.scheduler import cores
from af2cpu_plugin.scheduler.store import PredictionStore, fingerprint, flatten, prediction_key, unflatten
from af2cpu_plugin.testing.params_cache import cached_random_data_dir

# Short random chains: three queries of different lengths (longest first on the cluster).
QUERIES = {"q_short": "MKTAYIAKQRQISFVKSHF", "q_mid": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV",
           "q_long": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQD"}
# Outputs that depend on the wall clock, or record the run's own settings.
VOLATILE = {"log.txt", "config.json"}


# -- units --------------------------------------------------------------------

def test_store_round_trip_keeps_every_leaf_and_dtype(tmp_path):
    result = {"plddt": np.arange(5, dtype=np.float16), "ptm": np.asarray(0.5, np.float16),
              "structure_module": {"final_atom_positions": np.ones((5, 37, 3), np.float16)}}
    store = PredictionStore(tmp_path)
    fp = fingerprint({"aatype": np.zeros((1, 5), np.int32)})
    store.save_result("k", result, 2, [{"mean_plddt": np.asarray(1.0, np.float16)}], fp)
    back, recycles, per_recycle, fp_back = store.load_result("k")
    assert recycles == 2 and fp_back == fp and float(per_recycle[0]["mean_plddt"]) == 1.0
    assert set(flatten(back)) == set(flatten(result))
    for k, v in flatten(result).items():
        assert flatten(back)[k].dtype == v.dtype and np.array_equal(flatten(back)[k], v)
    assert store.has_result("k", fp) and not store.has_result("k", "other")
    assert unflatten(flatten(result)).keys() == result.keys()


def test_fingerprint_sees_a_changed_byte():
    a = {"msa": np.zeros((2, 3), np.float32)}
    b = {"msa": np.zeros((2, 3), np.float32)}
    b["msa"][1, 2] = 1e-30
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint({"msa": np.zeros((2, 3), np.float32)})


def test_prediction_key_is_a_safe_file_name():
    assert prediction_key("a/b c", "model_3", 7) == "a_b_c_model_3_seed_007"


def test_cores_split_evenly_and_auto_respects_memory():
    assert cores.split([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert cores.split([4, 5], 2) == [[4], [5]]
    with pytest.raises(ValueError):
        cores.split([0, 1], 3)
    assert cores.auto_instances(16, 100, 4 << 30, 20 << 30) == 5
    assert cores.auto_instances(16, 3, None, None) == 3
    assert cores.auto_instances(2, 10, 30 << 30, 20 << 30) == 1


def test_a_prediction_too_big_for_an_instances_share_runs_alone():
    from af2cpu_plugin.capacity import cost_model
    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.scheduler.jobs import Job
    from af2cpu_plugin.scheduler.orchestrator import split_by_share

    def job(key, num_res, with_workload=True):
        return Job(key=key, prefix=key, model_name="model_1", seed=0, store_root="", params_path="", config=None,
                   policy=RuntimePolicy(precision="fp32"), fingerprint="", num_res=num_res,
                   workload=cost_model.Workload(num_res) if with_workload else None)

    small, big, unknown = job("small", 100), job("big", 3000), job("unknown", 3000, with_workload=False)
    share = cost_model.estimate(cost_model.Workload(1000), "fp32", 1, None).peak_rss_bytes
    fit, alone = split_by_share([small, big, unknown], share, 1)
    assert fit == [small, unknown]  # no workload: planned elsewhere, left to the cluster
    assert [j for j, _ in alone] == [big] and alone[0][1] > share


def test_a_single_instance_on_many_cores_is_told_about_instances():
    from af2cpu_plugin.hooks.cpu_backend import HINT_CORES, instances_hint

    assert instances_hint(2) is None and instances_hint(HINT_CORES - 1) is None
    hint = instances_hint(16)
    assert hint.startswith("16 cores, one instance") and "--instances auto" in hint


def test_bad_instances_value_is_one_line(tmp_path):
    proc = _batch(tmp_path / "in.fasta", tmp_path / "out", "--instances", "two", write_input=True, check=False)
    assert proc.returncode != 0
    assert "--instances 'two'" in proc.stderr and "Traceback" not in proc.stderr


def test_instances_with_the_jax_backend_is_one_line(tmp_path):
    proc = _batch(tmp_path / "in.fasta", tmp_path / "out", "--backend", "jax", "--instances", "2",
                  write_input=True, check=False)
    assert proc.returncode != 0
    assert "use --backend cpu" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# -- end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir() -> Path:
    return cached_random_data_dir("alphafold2_ptm", models=(1, 2, 3, 4, 5))


def _batch(fasta: Path, out: Path, *extra: str, data: Path = None, write_input: bool = False,
           check: bool = True) -> subprocess.CompletedProcess:
    if write_input:
        fasta.write_text("".join(f">{k}\n{v}\n" for k, v in QUERIES.items()))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "af2cpu_plugin", "batch", *_args(data), *extra, str(fasta), str(out)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"af2cpu batch exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def _args(data: Path = None) -> list:
    args = ["--backend", "cpu", "--precision", "fp32", "--msa-mode", "single_sequence", "--num-models", "2",
            "--num-recycle", "1", "--num-seeds", "2"]
    return args + (["--data", str(data)] if data is not None else [])


def _start(fasta: Path, out: Path, data: Path, *extra: str) -> subprocess.Popen:
    """``af2cpu batch --instances 2`` in the background, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "af2cpu_plugin", "batch", *_args(data), "--instances", "2",
                             *extra, str(fasta), str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _contents(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name not in VOLATILE}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    base = tmp_path_factory.mktemp("multi")
    fasta = base / "queries.fasta"
    single = base / "single"
    _batch(fasta, single, "--threads", "1", data=data_dir, write_input=True)
    multi = base / "multi"
    proc = _batch(fasta, multi, "--instances", "2", data=data_dir)
    return single, multi, proc


@pytest.mark.heavy
def test_two_instances_write_the_single_instance_directory(runs):
    single, multi, _ = runs
    a, b = _contents(single), _contents(multi)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []
    assert not (multi / ".af2cpu").exists()  # the prediction store is emptied once the outputs are written


@pytest.mark.heavy
def test_two_instances_log_what_they_ran(runs):
    _, _, proc = runs
    log = proc.stdout + proc.stderr
    assert "12 predictions planned, 0 already done" in log
    assert "2 instances pinned to CPUs" in log
    assert "computing it here" not in log  # every prediction came from a worker
    assert "Could not predict" not in log  # the plan pass's skipped queries are not reported as failures
    assert "recycle=1" in log  # ColabFold's per-recycle lines, replayed


def _worker_processes(parent_pid: int):
    import psutil

    try:
        children = psutil.Process(parent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.heavy
def test_a_worker_killed_mid_batch_is_survived(runs, tmp_path, data_dir):
    """SIGKILL one worker once the predictions are dispatched: Dask moves its prediction to the other
    worker (or the main process computes it); the output directory is still the single-instance one."""
    single, _, _ = runs
    fasta = tmp_path / "queries.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in QUERIES.items()))
    out = tmp_path / "killed"
    proc = _start(fasta, out, data_dir)
    killed = None
    deadline = time.time() + 600
    while killed is None and time.time() < deadline and proc.poll() is None:
        store = out / ".af2cpu" / "predictions"
        workers = _worker_processes(proc.pid)
        if len(workers) >= 2 and store.is_dir() and any(store.glob("*.features.npz")):
            time.sleep(1.0)  # into the first predictions
            workers[0].send_signal(signal.SIGKILL)
            killed = workers[0].pid
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, log[-3000:]
    assert killed is not None, "no worker was seen to kill"
    a, b = _contents(single), _contents(out)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []


@pytest.mark.heavy
def test_scheduler_address_sends_the_work_to_that_cluster(runs, tmp_path, data_dir):
    from distributed import LocalCluster

    single, _, _ = runs
    fasta = tmp_path / "queries.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in QUERIES.items()))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        out = tmp_path / "remote"
        proc = _batch(fasta, out, "--scheduler", cluster.scheduler_address, data=data_dir)
        log = proc.stdout + proc.stderr
        assert "computing it here" not in log and "instances pinned" not in log
    a, b = _contents(single), _contents(out)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []


@pytest.mark.heavy
def test_an_interrupted_run_resumes_without_recomputing(runs, tmp_path, data_dir):
    """Ctrl-C once some predictions are stored: the rerun takes those from the store, computes the rest,
    and writes the single-instance directory."""
    import re

    single, _, _ = runs
    fasta = tmp_path / "queries.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in QUERIES.items()))
    out = tmp_path / "resumed"
    proc = _start(fasta, out, data_dir)
    store = out / ".af2cpu" / "predictions"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not any(store.glob("*.result.npz")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=600)
    stored = len(list(store.glob("*.result.npz")))
    assert stored >= 1
    rerun = _batch(fasta, out, "--instances", "2", data=data_dir)
    done = re.search(r"(\d+) predictions planned, (\d+) already done", rerun.stdout + rerun.stderr)
    assert done and int(done.group(1)) == 12 and int(done.group(2)) >= stored
    a, b = _contents(single), _contents(out)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []
