"""`af2cpu batch` on complexes end to end: AlphaFold-Multimer v3 with full-size random weights.

As tests/test_end_to_end_cli.py, each run is a subprocess through ColabFold's
pipeline (single sequence or a complex a3m, offline). The default suite folds
one heteromer on ``--backend cpu`` with ``--model-type auto`` (auto picks
multimer v3 for ``A:B``) and one chain with a multimer model; the ``heavy`` ones compare with
ColabFold's own JAX run: the same file set, the same ranking, close scores
(ipTM, ipSAE, pDockQ, actifpTM), and Amber relax of the complex.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from af2cpu_plugin.testing.params_cache import cached_random_data_dir
from test_end_to_end_cli import af2cpu

DATA = Path(__file__).parent / "data"
CHAIN_A = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 aa
CHAIN_B = "GSHMSELEKAMVALIDVFHQYSGR"  # 24 aa


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return cached_random_data_dir("alphafold2_multimer_v3", models=(1, 2, 3, 4, 5))


def write_fasta(directory: Path, job: str, sequence: str) -> Path:
    path = directory / f"{job}.fasta"
    path.write_text(f">{job}\n{sequence}\n")
    return path


def complex_a3m(directory: Path, job: str) -> Path:
    """A homodimer a3m in ColabFold's complex format (``#len\\tcopies`` header), chain A's MSA from tests/data."""
    from colabfold.input import msa_to_str

    msa = (DATA / "msa_62aa_6seqs.a3m").read_text()
    query = msa.splitlines()[1].strip()
    path = directory / f"{job}.a3m"
    path.write_text(msa_to_str([msa], [f">101\n{query}\n"], [query], [2]))
    return path


def run(query: Path, out: Path, data: Path, backend: str, *extra: str) -> Path:
    af2cpu("--backend", backend, "--precision", "fp32", "--data", str(data), *extra, str(query), str(out))
    return out


def scores(out: Path, job: str) -> dict:
    (path,) = out.glob(f"{job}_scores_rank_001_*.json")
    return json.loads(path.read_text())


def ranking(out: Path, job: str) -> list:
    names = sorted(p.name for p in out.glob(f"{job}_unrelaxed_rank_*.pdb"))
    return [re.sub(r"^.*_rank_\d+_", "", n) for n in names]


def test_heteromer_on_cpu_with_model_type_auto(tmp_path, data_dir):
    """``A:B`` with no --model-type: multimer v3 on the cpu engine, ColabFold's complex outputs."""
    query = write_fasta(tmp_path, "het", f"{CHAIN_A}:{CHAIN_B}")
    out = tmp_path / "out"
    af2cpu("--backend", "cpu", "--msa-mode", "single_sequence", "--data", str(data_dir), "--num-models", "1",
           "--num-recycle", "1", str(query), str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "alphafold2_multimer_v3" and config["backend"] == "cpu"
    s = scores(out, "het")
    assert 0.0 <= s["iptm"] <= 1.0 and len(s["plddt"]) == len(CHAIN_A) + len(CHAIN_B)
    for key in ("ipsae", "pdockq", "pdockq2"):
        assert key in s, key
    log = (out / "log.txt").read_text()
    assert "ipTM=" in log and "ipSAE=" in log
    pdb = next(out.glob("het_unrelaxed_rank_001_alphafold2_multimer_v3_model_*_seed_000.pdb")).read_text()
    chains = {line[21] for line in pdb.splitlines() if line.startswith("ATOM")}
    assert chains == {"A", "B"}


def test_multimer_model_on_a_single_chain(tmp_path, data_dir):
    """A multimer model type on one chain runs as ColabFold runs it: a monomer's outputs, no ipTM."""
    query = write_fasta(tmp_path, "one", CHAIN_A)
    out = tmp_path / "out"
    af2cpu("--backend", "cpu", "--model-type", "alphafold2_multimer_v3", "--msa-mode", "single_sequence",
           "--data", str(data_dir), "--num-models", "1", "--num-recycle", "0", str(query), str(out))
    s = scores(out, "one")
    assert len(s["plddt"]) == len(CHAIN_A) and "ptm" in s and "iptm" not in s
    assert next(out.glob("one_unrelaxed_rank_001_alphafold2_multimer_v3_model_*_seed_000.pdb"))


@pytest.mark.heavy
@pytest.mark.parametrize("kind", ["heteromer", "homodimer_fasta", "homodimer_a3m"])
def test_complex_matches_jax(tmp_path, data_dir, kind):
    """The same files and ranking as ColabFold's JAX run (two models, one recycle), close scores."""
    if kind == "heteromer":
        query, msa_mode = write_fasta(tmp_path, "cx", f"{CHAIN_A}:{CHAIN_B}"), "single_sequence"
    elif kind == "homodimer_fasta":
        query, msa_mode = write_fasta(tmp_path, "cx", f"{CHAIN_A}:{CHAIN_A}"), "single_sequence"
    else:
        query, msa_mode = complex_a3m(tmp_path, "cx"), "mmseqs2_uniref_env"  # an a3m input skips the search
    extra = ("--msa-mode", msa_mode, "--num-models", "2", "--num-recycle", "1", "--calc-extra-ptm")
    cpu = run(query, tmp_path / "cpu", data_dir, "cpu", *extra)
    jax = run(query, tmp_path / "jax", data_dir, "jax", *extra)
    assert {p.name for p in cpu.iterdir()} == {p.name for p in jax.iterdir()}
    assert ranking(cpu, "cx") == ranking(jax, "cx") and len(ranking(cpu, "cx")) == 2
    a, b = scores(cpu, "cx"), scores(jax, "cx")
    assert abs(a["iptm"] - b["iptm"]) <= 0.01 and abs(a["ptm"] - b["ptm"]) <= 0.01
    assert max(abs(p - q) for p, q in zip(a["plddt"], b["plddt"])) <= 0.5
    for key in ("actifptm", "ipsae", "pdockq", "pdockq2"):
        assert key in a and key in b, key
    assert (cpu / "cx_ext_metrics.png").exists()


@pytest.mark.heavy
def test_amber_relaxes_the_complex(tmp_path, data_dir):
    query = write_fasta(tmp_path, "rel", f"{CHAIN_A}:{CHAIN_B}")
    out = run(query, tmp_path / "out", data_dir, "cpu", "--msa-mode", "single_sequence", "--num-models", "1",
              "--num-recycle", "0", "--amber", "--num-relax", "1")
    pdb = next(out.glob("rel_relaxed_rank_001_*.pdb")).read_text()
    assert {line[21] for line in pdb.splitlines() if line.startswith("ATOM")} == {"A", "B"}
