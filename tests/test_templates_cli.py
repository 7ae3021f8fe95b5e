"""`af2cpu batch --templates --custom-template-path DIR` end to end, and bad template input.

Subprocess runs as a user would start them (see test_end_to_end_cli.py), with
full-size random weights cached on disk, offline: ``--msa-mode
single_sequence``, hhsearch/kalign from colabfold-binaries. The template is
ColabFold's test structure (tests/data) saved as ``1err.cif``, the query
its first 60 residues, so hhsearch finds it. Only agreement between
``--backend cpu`` and ``--backend jax`` means anything with random weights.

Bad input (empty dir, garbage mmCIF, a garbage file beside a good one) must
not crash: af2cpu's pre-flight warns and runs without (those) templates.
Those runs test af2cpu's and ColabFold's template handling, not the network,
so they use the instant stand-in model (:mod:`af2cpu_plugin.testing.instant_backend`):
the same CLI, pre-flight, hhsearch and outputs, no minute of compute each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from af2cpu_plugin.testing.params_cache import cached_random_data_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # ColabFold's test structure, MIT (see data/README.md)
STRUCTURE = "ERR550519_2213899_unrelaxed_model_1"
JOB = "tpl"
QUERY_LENGTH = 60
GARBAGE = "this is not an mmCIF file\n"


CIF = DATA / f"{STRUCTURE}.cif"
PDB = DATA / f"{STRUCTURE}.pdb"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return cached_random_data_dir("alphafold2_ptm", models=(1, 2, 3, 4, 5))


@pytest.fixture(scope="module")
def query(tmp_path_factory) -> Path:
    """The first 60 residues of the template's own sequence, under a short header."""
    from alphafold.common import protein, residue_constants

    prot = protein.from_pdb_string(PDB.read_text())
    sequence = "".join(residue_constants.restypes_with_x[a] for a in prot.aatype)[:QUERY_LENGTH]
    path = tmp_path_factory.mktemp("input") / f"{JOB}.fasta"
    path.write_text(f">{JOB}\n{sequence}\n")
    return path


def template_dir(base: Path, good: bool = True, garbage: bool = False) -> Path:
    """A fresh template dir (ColabFold writes its pdb70 index into the dir it reads)."""
    base.mkdir(parents=True)
    if good:
        shutil.copy(CIF, base / "1err.cif")
    if garbage:
        (base / "2bad.cif").write_text(GARBAGE)
    return base


def af2cpu(*args: str, module: str = "af2cpu_plugin") -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, "batch", *args], capture_output=True, text=True,
                          env=env, timeout=1800)


def batch(query: Path, out: Path, data: Path, backend: str, *extra: str, check: bool = True):
    # the instant stand-in registers its backend name only when started through its own module
    module = "af2cpu_plugin.testing.instant_backend" if backend == "instant" else "af2cpu_plugin"
    proc = af2cpu("--backend", backend, "--precision", "fp32", "--msa-mode", "single_sequence", "--data", str(data),
                  "--num-recycle", "0", *extra, str(query), str(out), module=module)
    if check and proc.returncode != 0:
        raise AssertionError(f"af2cpu batch ({backend}) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def scores(out: Path, model: int) -> dict:
    (path,) = out.glob(f"{JOB}_scores_rank_*_alphafold2_ptm_model_{model}_seed_*.json")
    return json.loads(path.read_text())


def warnings(proc: subprocess.CompletedProcess) -> list:
    return [line for line in proc.stderr.splitlines() if line.startswith("af2cpu: warning: ")]


# ---------------------------------------------------------------------------
# a template found: --backend cpu against --backend jax
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templated_runs(tmp_path_factory, data_dir, query):
    base = tmp_path_factory.mktemp("templated")
    extra = ("--templates", "--num-models", "1", "--model-order", "1")  # model 1 embeds templates; 3 does not
    runs = {}
    for backend in ("cpu", "jax"):
        tpl = template_dir(base / f"templates_{backend}")
        out = base / backend
        proc = batch(query, out, data_dir, backend, *extra, "--custom-template-path", str(tpl))
        runs[backend] = (out, proc)
    return runs


def test_templated_cpu_writes_the_same_files_as_jax(templated_runs):
    (cpu, cpu_proc), (jax, _) = templated_runs["cpu"], templated_runs["jax"]
    cpu_files = {p.name for p in cpu.iterdir()}
    assert cpu_files == {p.name for p in jax.iterdir()}
    assert f"{JOB}_template_domain_names.json" in cpu_files
    assert "templates_checked" not in cpu_files  # all files usable: ColabFold reads the dir itself
    assert not warnings(cpu_proc)
    names = json.loads((cpu / f"{JOB}_template_domain_names.json").read_text())
    assert names == json.loads((jax / f"{JOB}_template_domain_names.json").read_text())
    assert names == {"A": ["1err_A", "1err_A"]}, names  # {chain: hits}: two hhsearch hits, one partial
    for out in (cpu, jax):
        log = (out / "log.txt").read_text()
        assert "Sequence 0 found templates" in log and "1err" in log
    config = json.loads((cpu / "config.json").read_text())
    assert config["use_templates"] is True and config["backend"] == "cpu"
    check = config["af2cpu_template_check"]
    assert check["usable_templates"] == ["1err.cif"] and check["skipped_templates"] == {}
    assert check["used_template_path"] == check["custom_template_path"]


def test_templated_model_1_matches_jax(templated_runs):
    """model_1 (the template-using architecture) against ColabFold's jitted JAX: the same
    bars as the template-free runs (tests/test_end_to_end_cli.py)."""
    (cpu, _), (jax, _) = templated_runs["cpu"], templated_runs["jax"]
    c, j = scores(cpu, 1), scores(jax, 1)
    assert len(c["plddt"]) == QUERY_LENGTH
    assert abs(c["ptm"] - j["ptm"]) <= 0.01
    diffs = [abs(a - b) for a, b in zip(c["plddt"], j["plddt"])]
    assert max(diffs) <= 0.5, max(diffs)
    pae = [abs(a - b) for ra, rb in zip(c["pae"], j["pae"]) for a, b in zip(ra, rb)]
    assert max(pae) <= 0.5, max(pae)


# ---------------------------------------------------------------------------
# bad template input: warn, run without (those) templates, never crash
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, data_dir, query):
    base = tmp_path_factory.mktemp("bad")
    cases = {
        "empty": template_dir(base / "t_empty", good=False),
        "garbage": template_dir(base / "t_garbage", good=False, garbage=True),
        "mixed": template_dir(base / "t_mixed", good=True, garbage=True),
    }
    runs = {}
    for name, tpl in cases.items():
        out = base / name
        proc = batch(query, out, data_dir, "instant", "--templates", "--num-models", "1", "--model-order", "1",
                     "--custom-template-path", str(tpl), check=False)
        runs[name] = (tpl, out, proc)
    return runs


@pytest.mark.parametrize("case", ["empty", "garbage", "mixed"])
def test_bad_templates_warn_and_run(bad_input_runs, case):
    tpl, out, proc = bad_input_runs[case]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert list(out.glob(f"{JOB}_unrelaxed_rank_001_*.pdb"))
    lines = warnings(proc)
    assert lines, proc.stderr[-3000:]
    check = json.loads((out / "config.json").read_text())["af2cpu_template_check"]
    if case in ("empty", "garbage"):
        assert f"no usable mmCIF templates in {tpl}: running without templates" in lines[-1]
        assert check["used_template_path"] is None
        assert json.loads((out / "config.json").read_text())["use_templates"] is False
    if case in ("garbage", "mixed"):
        assert any("2bad.cif" in line and "not used" in line for line in lines), lines
        assert list(check["skipped_templates"]) == ["2bad.cif"]
    if case == "mixed":
        scratch = out / "templates_checked"
        assert check["used_template_path"] == str(scratch)
        assert (scratch / "1err.cif").is_file() and not (scratch / "2bad.cif").exists()
        assert "Sequence 0 found templates" in (out / "log.txt").read_text()
        assert json.loads((out / f"{JOB}_template_domain_names.json").read_text()) == {"A": ["1err_A", "1err_A"]}
        assert not (tpl / "pdb70_a3m.ffdata").exists()  # ColabFold read the copy, not the user's dir


def test_missing_template_dir_is_one_line(tmp_path, data_dir, query):
    proc = batch(query, tmp_path / "out", data_dir, "cpu", "--templates", "--custom-template-path",
                 str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("af2cpu: error: --custom-template-path ") and " — " in lines[0]
    assert not (tmp_path / "out").exists()
