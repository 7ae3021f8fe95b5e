"""`af2cpu batch` end to end through ColabFold, with full-size random weights.

Each run is a subprocess, as a user would start it: ColabFold's MSA stage
(single sequence, offline), feature pipeline, ranking, outputs, plots and
relax, with the model computed by ``--backend cpu`` or by ColabFold's own JAX
(``--backend jax --precision fp32``). The weights are random (cached on disk
across runs), so only agreement between the backends means anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from af2cpu_plugin.testing.params_cache import cached_random_data_dir

ROOT = Path(__file__).resolve().parents[1]
JOB = "P54025"
# Files that depend on the wall clock or the machine, not on the backend.
VOLATILE = {"log.txt"}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return cached_random_data_dir("alphafold2_ptm", models=(1, 2, 3, 4, 5))


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The shipped example under a short header, so ColabFold names the job ``P54025``."""
    sequence = "".join((ROOT / "examples" / "P54025.fasta").read_text().splitlines()[1:])
    path = tmp_path_factory.mktemp("input") / "P54025.fasta"
    path.write_text(f">{JOB}\n{sequence}\n")
    return path


def af2cpu(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "af2cpu_plugin", "batch", *args], capture_output=True, text=True,
                          env=env, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"af2cpu batch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def batch(example: Path, out: Path, data: Path, backend: str, *extra: str) -> Path:
    af2cpu("--backend", backend, "--precision", "fp32", "--msa-mode", "single_sequence", "--data", str(data),
           *extra, str(example), str(out))
    return out


def ranking(out: Path) -> list:
    names = sorted(p.name for p in out.glob(f"{JOB}_unrelaxed_rank_*.pdb"))
    return [re.sub(r"^.*_rank_\d+_", "", n) for n in names]


@pytest.fixture(scope="module")
def one_model_runs(tmp_path_factory, data_dir, example):
    base = tmp_path_factory.mktemp("e2e")
    common = ("--num-models", "1", "--num-recycle", "1")
    return (batch(example, base / "cpu", data_dir, "cpu", *common),
            batch(example, base / "jax", data_dir, "jax", *common))


def test_cpu_writes_the_same_files_as_jax(one_model_runs):
    cpu, jax = one_model_runs
    cpu_files = {p.name for p in cpu.iterdir()}
    jax_files = {p.name for p in jax.iterdir()}
    assert cpu_files == jax_files
    for name in (f"{JOB}.a3m", f"{JOB}.done.txt", "config.json", "log.txt", "cite.bibtex",
                 f"{JOB}_pae.png", f"{JOB}_plddt.png", f"{JOB}_coverage.png",
                 f"{JOB}_predicted_aligned_error_v1.json"):
        assert name in cpu_files, name
    assert any(n.startswith(f"{JOB}_scores_rank_001") for n in cpu_files)
    config = json.loads((cpu / "config.json").read_text())
    assert config["backend"] == "cpu" and config["precision"] == "fp32"
    assert config["use_bfloat16"] is False
    assert json.loads((jax / "config.json").read_text())["backend"] == "jax"
    log = (cpu / "log.txt").read_text()
    assert "reusing cached safetensors" in log or "converted" in log


def score_gaps(a: Path, b: Path) -> tuple:
    """max |Δ| of pTM, pLDDT and PAE between two runs' rank-1 scores."""
    (x,) = a.glob(f"{JOB}_scores_rank_001_*.json")
    (y,) = b.glob(f"{JOB}_scores_rank_001_*.json")
    xs, ys = json.loads(x.read_text()), json.loads(y.read_text())
    return (abs(xs["ptm"] - ys["ptm"]), max(abs(p - q) for p, q in zip(xs["plddt"], ys["plddt"])),
            max(abs(p - q) for rp, rq in zip(xs["pae"], ys["pae"]) for p, q in zip(rp, rq)))


def test_cpu_scores_match_jax(one_model_runs):
    ptm, plddt, pae = score_gaps(*one_model_runs)
    assert ptm <= 0.01 and plddt <= 0.5 and pae <= 0.5, (ptm, plddt, pae)


def test_rerun_skips_finished_query(one_model_runs, data_dir, example):
    cpu, _ = one_model_runs
    pdb = next(cpu.glob(f"{JOB}_unrelaxed_rank_001_*.pdb"))
    before = pdb.stat().st_mtime_ns
    batch(example, cpu, data_dir, "cpu", "--num-models", "1", "--num-recycle", "1")
    assert pdb.stat().st_mtime_ns == before
    assert "Skipping" in (cpu / "log.txt").read_text()


def test_amber_relax_on_cpu(tmp_path, data_dir, example):
    out = batch(example, tmp_path / "relax", data_dir, "cpu", "--num-models", "1", "--num-recycle", "0", "--amber",
                "--num-relax", "1")
    assert list(out.glob(f"{JOB}_relaxed_rank_001_*.pdb"))


@pytest.mark.heavy  # 92 s on a Zen 3; the one-model comparison above stays in the default suite
def test_five_models_two_seeds_rank_like_jax(tmp_path, data_dir, example):
    extra = ("--num-models", "5", "--num-seeds", "2", "--num-recycle", "0")
    cpu = batch(example, tmp_path / "cpu", data_dir, "cpu", *extra)
    jax = batch(example, tmp_path / "jax", data_dir, "jax", *extra)
    assert len(ranking(cpu)) == 10
    assert ranking(cpu) == ranking(jax)
    # Earlier runs converted the params: this one converts nothing and says so.
    log = (cpu / "log.txt").read_text()
    assert log.count("reusing cached safetensors") >= 5 and "converted" not in log


def test_default_precision_is_resolved_recorded_and_close_to_jax(one_model_runs, tmp_path, data_dir, example):
    """No --precision: ``auto`` (bf16 on a CPU with native bf16, else fp32), recorded in config.json;
    the scores stay within ColabFold's own bf16-vs-fp32 gap (0.18 pLDDT, 3.6 PAE at 76 residues)."""
    from af2cpu_plugin.cpu import resolve_precision

    _, jax = one_model_runs
    out = tmp_path / "auto"
    af2cpu("--backend", "cpu", "--msa-mode", "single_sequence", "--data", str(data_dir), "--num-models", "1",
           "--num-recycle", "1", str(example), str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == resolve_precision("auto")
    assert config["use_bfloat16"] is (config["precision"] == "bf16")
    from af2cpu_plugin import kernels

    # native where the engine's own kernels build and run here, else PyTorch's (stock)
    assert config["kernels"] == ("native" if kernels.status()[0] else "stock")
    assert config["cpu_capability"] and "cpu_native_bf16" in config
    ptm, plddt, pae = score_gaps(out, jax)
    assert ptm <= 0.02 and plddt <= 1.0 and pae <= 3.6, (ptm, plddt, pae)


def test_check_finite_names_the_model_and_recycle():
    import numpy as np

    from af2cpu_plugin.runner import NonFiniteOutput, check_finite

    good = {"structure_module": {"final_atom_positions": np.zeros((3, 37, 3))}, "plddt": np.ones(3)}
    check_finite(good, 0, "m")
    bad = {**good, "predicted_aligned_error": np.array([[0.0, np.nan], [1.0, 2.0]])}
    with pytest.raises(NonFiniteOutput, match=r"^m gave NaN or Inf \(PAE\) at recycle 2; .* — .*download"):
        check_finite(bad, 2, "m")


@pytest.mark.heavy
def test_non_finite_outputs_are_one_line_and_nothing_is_done(tmp_path, data_dir, example):
    """Weights with an Inf in them (a damaged file): one line naming the model and the recycle, exit 1,
    no structure, no scores and no done marker."""
    import numpy as np

    params = tmp_path / "data" / "params"
    params.mkdir(parents=True)
    for src in (data_dir / "params").iterdir():
        if src.name != "params_model_1_ptm.npz" and not src.name.endswith(".safetensors"):
            (params / src.name).symlink_to(src)
    with np.load(data_dir / "params" / "params_model_1_ptm.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    key = "alphafold/alphafold_iteration/structure_module/fold_iteration/affine_update//weights"
    arrays[key] = arrays[key].copy()
    arrays[key][:4] = np.inf
    np.savez(params / "params_model_1_ptm.npz", **arrays)
    out = tmp_path / "out"
    proc = af2cpu("--backend", "cpu", "--precision", "fp32", "--msa-mode", "single_sequence", "--data",
                  str(tmp_path / "data"), "--num-models", "1", "--num-recycle", "0", str(example), str(out),
                  check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "alphafold2_ptm_model_1_seed_000 gave NaN or Inf" in errors[0], errors
    assert not list(out.glob("*.done.txt")) and not list(out.glob("*.pdb")) and not list(out.glob("*scores*"))
