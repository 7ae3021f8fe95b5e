"""What a long batch survives: a failed Amber relax, SIGTERM mid-batch, a full disk.

The model is :mod:`af2cpu_plugin.testing.instant_backend` (a made-up prediction
at once), so these runs take seconds; everything around it is ColabFold's own
``run()``: outputs, ranking, relax, done markers, resume.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import offline_workdir

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from af2cpu_plugin import cli  # noqa: E402
from af2cpu_plugin.testing.instant_backend import InstantBackend  # noqa: E402

QUERIES = ">first\nMKTAYIAKQRQISFVKSHFS\n>second\nMKTAYIAKQRQISFVKSHFSRQLEE\n>third\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIE\n"


@pytest.fixture
def workdir(tmp_path):
    return offline_workdir(tmp_path, **{"queries.fasta": QUERIES})  # the instant model reads no weights


def batch_argv(workdir, *extra):
    return ["batch", "--backend", "instant", "--msa-mode", "single_sequence", "--data", str(workdir / "data"),
            "--num-models", "1", "--sort-queries-by", "none", *extra, str(workdir / "queries.fasta"),
            str(workdir / "out")]


def start(workdir, *extra, seconds=0.0, preexec_fn=None) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "af2cpu_plugin.testing.instant_backend", "--seconds", str(seconds),
                             *batch_argv(workdir, *extra)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec_fn)


def finish(proc: subprocess.Popen):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err


def done(workdir) -> set:
    return {p.name[: -len(".done.txt")] for p in (workdir / "out").glob("*.done.txt")}


# ---------------------------------------------------------------------------
# Amber relax that fails
# ---------------------------------------------------------------------------


def test_failed_relax_keeps_the_unrelaxed_model_and_goes_on(workdir, monkeypatch):
    """ColabFold's relax raising (OpenMM's "Minimization failed after 100 attempts") loses that model's
    relaxed PDB only: its unrelaxed one is kept, the next model is relaxed, the query is done, and the log
    says which model failed."""
    from colabfold import batch

    calls = []

    def relax_me(pdb_lines=None, **kw):
        calls.append(pdb_lines)
        if len(calls) == 1:
            raise ValueError("Minimization failed after 100 attempts.")
        return "REMARK relaxed by the test\n" + pdb_lines

    monkeypatch.setattr(batch, "relax_me", relax_me)
    argv = batch_argv(workdir, "--amber", "--num-relax", "2")
    argv[argv.index("--num-models") + 1] = "2"
    assert cli.main(argv, extra_plugins=[InstantBackend()]) == 0

    out = workdir / "out"
    assert len(calls) == 6  # 3 queries x 2 models; the first call fails
    assert done(workdir) == {"first", "second", "third"}
    first = "first_{}_rank_{:03d}_alphafold2_ptm_model_{}_seed_000.pdb"
    assert not (out / first.format("relaxed", 1, 2)).exists()  # model 2 ranks first (instant model's pLDDT)
    assert (out / first.format("unrelaxed", 1, 2)).is_file()
    assert (out / first.format("relaxed", 2, 1)).read_text().startswith("REMARK relaxed by the test")
    assert not any("AF2CPU: AMBER RELAX FAILED" in p.read_text() for p in out.glob("*_relaxed_*.pdb"))
    log = (out / "log.txt").read_text()
    assert ("first: Amber relax failed for rank_001_alphafold2_ptm_model_2_seed_000 (Minimization failed after "
            "100 attempts.); kept the unrelaxed structure first_unrelaxed_rank_001_alphafold2_ptm_model_2_seed_000"
            ".pdb") in log
    assert batch.relax_me is relax_me  # the seam restored ColabFold's (here: the test's) relax_me


# ---------------------------------------------------------------------------
# SIGTERM mid-batch, then resume
# ---------------------------------------------------------------------------


def _wait_for(predicate, proc, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"af2cpu exited {proc.returncode} early:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigterm_keeps_finished_queries_and_a_rerun_resumes(workdir):
    proc = start(workdir, seconds=1.5)  # each prediction takes 1.5 s: SIGTERM lands inside the second query's
    _wait_for(lambda: "first" in done(workdir), proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)

    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("af2cpu: stopped by SIGTERM; finished queries are kept; rerun the same "
                                           "command to resume (ColabFold skips queries with a .done.txt)")
    assert done(workdir) == {"first"}
    kept = workdir / "out" / "first_unrelaxed_rank_001_alphafold2_ptm_model_1_seed_000.pdb"
    stamp = kept.stat().st_mtime_ns

    code, err = finish(start(workdir))
    assert code == 0, err[-3000:]
    assert done(workdir) == {"first", "second", "third"}
    assert kept.stat().st_mtime_ns == stamp  # not recomputed
    assert "Skipping first (already done)" in (workdir / "out" / "log.txt").read_text()


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------


def _file_size_limit(limit_bytes: int):
    """A file-size limit (``ulimit -f``) in the child: the first write past it fails with EFBIG, the way a full
    disk fails with ENOSPC, without needing a small file system (Python ignores SIGXFSZ, so it is an error)."""

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_full_disk_is_one_line_marks_nothing_done_and_a_rerun_completes(workdir):
    # The outputs are small (20-31 residues) except the pLDDT and PAE plots, about 30-90 KB each.
    code, err = finish(start(workdir, preexec_fn=_file_size_limit(20_000)))
    lines = err.strip().splitlines()

    assert code == 1, err[-3000:]
    assert "Traceback" not in err and "Logging error" not in err
    assert lines[-1].startswith("af2cpu: error: file too large for the file-size limit (ulimit -f)")
    assert lines[-1].endswith("— free space or use another results dir; finished queries are kept; rerun the "
                              "same command to resume (ColabFold skips queries with a .done.txt)")
    assert done(workdir) == set()  # the first query's plots failed: not marked done

    code, err = finish(start(workdir))
    assert code == 0, err[-3000:]
    assert done(workdir) == {"first", "second", "third"}
