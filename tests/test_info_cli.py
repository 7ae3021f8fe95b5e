"""``af2cpu info`` and the memory pre-flight of ``af2cpu batch --backend cpu`` (fast: no model runs).

The cost model is replaced where a test needs a query not to fit, so these tests do not depend on its
(still being calibrated) numbers.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
from conftest import offline_workdir

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from af2cpu_plugin import cli  # noqa: E402
from af2cpu_plugin.capacity import preflight  # noqa: E402
from af2cpu_plugin.capacity.cost_model import Estimate, Workload  # noqa: E402
from af2cpu_plugin.capacity.limits import MemoryLimit  # noqa: E402
from af2cpu_plugin.cpu import CpuInfo  # noqa: E402
from af2cpu_plugin.hooks import cpu_backend  # noqa: E402

GIB = 1 << 30
QUERY = ">toy\nMKTAYIAKQRQISFVKSHFSRQ\n"


@pytest.fixture
def workdir(tmp_path):
    """A query and a data dir whose download marker stops any fetch."""
    return offline_workdir(tmp_path, **{"query.fasta": QUERY})


def _batch_argv(workdir, *extra):
    return ["batch", "--msa-mode", "single_sequence", "--data", str(workdir / "data"), "--num-models", "1",
            "--backend", "cpu", "--precision", "fp32", *extra, str(workdir / "query.fasta"), str(workdir / "out")]


def fake_estimate(workload, precision="fp32", threads=1, memory_limit=None):
    """8 GiB plus 1 MiB per extra-MSA row in fp32, half in bf16: 10+ GiB at ColabFold's budget."""
    peak = (8 * GIB + workload.extra_msa_depth * (1 << 20)) // (2 if precision == "bf16" else 1)
    return Estimate(peak_rss_bytes=peak, seconds_per_pass=2.0, channel_groups=1, memory_limit=memory_limit,
                    calibrated=False)


def _cpu(native_bf16: bool) -> CpuInfo:
    flags = {"avx512f", "avx2"} | ({"avx512_bf16"} if native_bf16 else set())
    return CpuInfo(model="Test CPU", capability="AVX512", flags=frozenset(flags), cpus=2)


def _error_lines(text: str):
    return [line for line in text.splitlines() if "error" in line.lower()]


# ---------------------------------------------------------------------------
# af2cpu info
# ---------------------------------------------------------------------------


def test_info_length_prints_cpu_precision_and_a_prediction(workdir, capsys, monkeypatch):
    monkeypatch.setenv("AF2CPU_CALIBRATION_DIR", str(workdir / "no-calibration"))
    assert cli.main(["info", "--length", "300", "--data", str(workdir / "data"), "--memory-limit", "64G"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for prefix in ("cpu: ", "cores granted: ", "avx512f: ", "avx512_bf16: ", "amx: ", "torch: ", "oneDNN: ",
                   "threads: ", "precision: ", "memory limit: 64.0 GiB (--memory-limit)", "params: none under",
                   "model type: alphafold2_ptm", "MSA rows: 512 clusters + 5120 extra", "passes per model: 4"):
        assert any(line.startswith(prefix) for line in lines), (prefix, out)
    assert any(line.startswith("precision: bf16") or line.startswith("precision: fp32") for line in lines)
    query = [line for line in lines if line.startswith("query 'length 300': 300 residues")]
    assert len(query) == 1 and "peak" in query[0] and "per model" in query[0] and "fits" in query[0], out
    # Not calibrated here: it says whose coefficients it used (this CPU's vector ISA's) and how to measure.
    assert any(line.startswith("cost model: built-in coefficients (measured on an AMD Zen ") and
               "af2cpu calibrate" in line for line in lines), out


def test_info_multimer_v3_time_is_an_upper_bound(capsys, monkeypatch):
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    assert cli.main(["info", "--length", "100", "--model-type", "alphafold2_multimer_v3", "--memory-limit", "4G",
                     "--data", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "MSA rows: 508 clusters + 2048 extra" in out and "passes per model: up to 21" in out
    assert "up to 42.0 s per model" in out and "does NOT fit in 4.0 GiB (--memory-limit)" in out, out


def test_info_reads_an_input_like_batch(workdir, capsys):
    (workdir / "two.fasta").write_text(QUERY + ">ab\nMKTAYIAKQR:MKTAYIAKQRLLL\n")
    assert cli.main(["info", str(workdir / "two.fasta"), "--msa-mode", "single_sequence",
                     "--data", str(workdir / "data")]) == 0
    out = capsys.readouterr().out
    assert "model type: alphafold2_multimer_v3" in out  # auto, as ColabFold picks it for a complex
    assert "MSA rows: 1 clusters + 1 extra sequences (--msa-mode single_sequence)" in out
    assert "query 'toy': 22 residues, single chain" in out, out  # its own length: the cpu engine does not pad
    assert "query 'ab': 23 residues, complex of 2 chains" in out, out


def test_info_params_cache_status(workdir, capsys, monkeypatch):
    """Lists each params file and whether its converted cache exists, without converting or hashing it."""
    monkeypatch.setenv("AF2CPU_CACHE", str(workdir / "cache"))
    (workdir / "data" / "params" / "params_model_1_ptm.npz").write_bytes(b"not really an npz")
    assert cli.main(["info", "--data", str(workdir / "data")]) == 0
    out = capsys.readouterr().out
    assert "params: 1 file(s)" in out and "params_model_1_ptm.npz: not converted yet" in out, out
    assert "prediction: pass --length L or an INPUT" in out
    assert not list((workdir / "data" / "params").glob(".*.sha256.json"))  # nothing hashed
    assert not list((workdir / "data" / "params").glob("*.safetensors"))


@pytest.mark.parametrize("argv, message", [
    (["--length", "0"], "--length 0 must be at least 1"),
    (["--memory-limit", "20X"], "--memory-limit '20X' is not a memory size"),
    (["--length", "30", "some.fasta"], "either --length or INPUT"),
    (["missing.fasta"], "input missing.fasta not found"),
    (["--threads", "0"], "--threads 0 must be at least 1"),
])
def test_info_bad_input_is_one_line(argv, message, capsys):
    assert cli.main(["info", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("af2cpu: error: ") and message in err and " — " in err, err


def test_usage_lists_info():
    assert "info" in cli.COMMANDS and "  info " in cli.USAGE


# ---------------------------------------------------------------------------
# workloads (mirrors colabfold.batch.run)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, budget", [
    ("alphafold2_ptm", (512, 5120)), ("alphafold2", (512, 5120)), ("alphafold2_multimer_v1", (252, 1152)),
    ("alphafold2_multimer_v2", (252, 1152)), ("alphafold2_multimer_v3", (508, 2048)),
])
def test_msa_budget_defaults(model_type, budget):
    assert preflight.msa_budget(argparse.Namespace(), model_type, False, 1) == budget


def test_msa_budget_options_and_single_sequence():
    ns = argparse.Namespace
    assert preflight.msa_budget(ns(max_seq=64, max_extra_seq=128), "alphafold2_ptm", False, 1) == (64, 128)
    assert preflight.msa_budget(ns(max_msa="32:64", max_extra_seq=9), "alphafold2_ptm", False, 1) == (32, 64)
    assert preflight.msa_budget(ns(msa_mode="single_sequence"), "alphafold2_ptm", False, 1) == (1, 1)
    # a complex folded with a monomer model: one more row per chain; templates: 4 more
    assert preflight.msa_budget(ns(msa_mode="single_sequence", templates=True), "alphafold2_ptm", True, 2) == (7, 1)
    assert preflight.msa_budget(ns(msa_mode="single_sequence"), "alphafold2_multimer_v3", True, 2) == (1, 1)


def test_recycles():
    ns = argparse.Namespace
    assert preflight.recycles(ns(), "alphafold2_ptm") == (4, False)
    assert preflight.recycles(ns(), "alphafold2_multimer_v2") == (4, False)
    assert preflight.recycles(ns(), "alphafold2_multimer_v3") == (21, True)
    assert preflight.recycles(ns(num_recycle=1), "alphafold2_multimer_v3") == (2, True)


# ---------------------------------------------------------------------------
# the refusal of af2cpu batch --backend cpu
# ---------------------------------------------------------------------------


def _planned(length=300, extra=5120):
    workload = Workload(num_res=length, msa_depth=512, extra_msa_depth=extra)
    return preflight.Planned(preflight.Query("q", length), workload, fake_estimate(workload, "fp32", 2, 6 * GIB))


def test_suggestions_try_bf16_a_smaller_extra_msa_and_a_larger_limit(monkeypatch):
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    args = argparse.Namespace()
    fixes = preflight.suggestions(args, _planned(), "fp32", 2, 7 * GIB, native_bf16=True)
    assert fixes[0] == "--precision bf16 (6.5 GiB)" and len(fixes) == 2, fixes
    assert fixes[-1] == "--memory-limit 13G if that much memory is really free"
    # without native bf16 bf16 is never suggested; the extra MSA is halved until it fits (8 GiB + 80 MiB > 6 GiB: never)
    fixes = preflight.suggestions(args, _planned(), "fp32", 2, 9 * GIB, native_bf16=False)
    assert fixes[0].startswith("--max-extra-seq 640 (") and not any("bf16" in f for f in fixes), fixes
    fixes = preflight.suggestions(argparse.Namespace(max_msa="512:5120"), _planned(), "fp32", 2, 9 * GIB, False)
    assert fixes[0].startswith("--max-msa 512:640 (")
    # bf16 and a smaller extra MSA together, when neither alone is enough
    fixes = preflight.suggestions(args, _planned(), "fp32", 2, int(4.5 * GIB), native_bf16=True)
    assert fixes[0] == "--precision bf16 --max-extra-seq 640 (4.3 GiB)", fixes


def test_refusal_names_the_first_query_that_does_not_fit(monkeypatch):
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    limit = MemoryLimit(9 * GIB, "cgroup memory.max")
    queries = [preflight.Query("small", 10), preflight.Query("big", 300)]
    planned = preflight.plan(argparse.Namespace(), queries, "alphafold2_ptm", False, "fp32", 2, limit.bytes)
    line = preflight.refusal(argparse.Namespace(), planned, limit, "fp32", 2, native_bf16=False)
    assert line.startswith("query 'small' (10 residues) is predicted to need 13.0 GiB"), line
    assert "over the memory limit of 9.0 GiB (cgroup memory.max) — try " in line and line.endswith("--force to run it anyway")
    assert "\n" not in line and line.count(" — ") == 1
    roomy = MemoryLimit(64 * GIB, "x")
    planned = preflight.plan(argparse.Namespace(), queries, "alphafold2_ptm", False, "fp32", 2, roomy.bytes)
    assert preflight.refusal(argparse.Namespace(), planned, roomy, "fp32", 2, native_bf16=False) is None


def test_batch_refuses_before_compute_in_one_line(workdir, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    monkeypatch.setattr("af2cpu_plugin.cpu.cpu_info", lambda: _cpu(native_bf16=True))
    assert cli.main(_batch_argv(workdir, "--memory-limit", "6G")) == 2
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    assert line.startswith("af2cpu: error: query 'toy' (22 residues) is predicted to need 8.0 GiB"), line
    assert "over the memory limit of 6.0 GiB (--memory-limit)" in line
    assert "--precision bf16 (4.0 GiB)" in line and "--memory-limit 9G" in line and "--force" in line
    assert not (workdir / "out").exists()  # refused before ColabFold started


def test_bad_memory_limit_is_one_line(workdir, capsys):
    assert cli.main(_batch_argv(workdir, "--memory-limit", "lots", "--force")) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "--memory-limit 'lots' is not a memory size — write" in err, err
    assert not (workdir / "out").exists()


def test_force_passes_the_check(monkeypatch):
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    monkeypatch.setattr("af2cpu_plugin.cpu.cpu_info", lambda: _cpu(native_bf16=False))
    args = argparse.Namespace(
        input="unused", model_type="auto", use_gpu_relax=False, num_ensemble=1, use_dropout=False,
        use_fast_kernels=False, precision="fp32", threads=1, subbatch_size=None, memory_limit="1G", force=True,
    )
    assert cpu_backend.af2cpu_check_request(backend="cpu", args=args, model_type="alphafold2_ptm",
                                            is_complex=False) is None
    assert args.af2cpu_memory_limit == MemoryLimit(GIB, "--memory-limit")


def test_force_runs_on_and_config_records_the_limit(workdir, capsys, monkeypatch):
    """With --force the run reaches ColabFold (and stops at the missing params); config.json records the limit."""
    monkeypatch.setattr(preflight, "estimate", fake_estimate)
    assert cli.main(_batch_argv(workdir, "--memory-limit", "6G", "--force", "--kernels", "stock")) == 2
    err = capsys.readouterr().err
    assert "params_model_3_ptm.npz not found" in err.splitlines()[-1], err
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert config["memory_limit"] == 6 * GIB and config["memory_limit_source"] == "--memory-limit"
    assert config["memory_check_forced"] is True


def test_runner_policy_gets_the_limit_when_it_has_the_field(monkeypatch):
    """memory_limit goes to RuntimePolicy only where the field exists (it is being added concurrently)."""
    import dataclasses

    pytest.importorskip("af2cpu_plugin.runner")
    from af2cpu_plugin.engine.policy import RuntimePolicy

    created = {}

    class Fake:
        def __init__(self, config, params=None, **kw):
            created.update(kw)

    monkeypatch.setattr("af2cpu_plugin.runner.CpuRunModel", Fake)
    args = argparse.Namespace(precision="fp32", threads=None, subbatch_size=None, kernels="stock", memory_limit="3G")
    cpu_backend.af2cpu_make_runner(backend="cpu", config="cfg", params={}, extended_ptm_config={}, jit_kwargs={},
                                   args=args)
    if "memory_limit" in {f.name for f in dataclasses.fields(RuntimePolicy)}:
        assert created["policy"].memory_limit == 3 * GIB
    else:
        assert not hasattr(created["policy"], "memory_limit")
