"""The af2cpu CLI, its pluggy hooks and the ColabFold seam (fast: no model compute).

A toy backend stands in for a model: ColabFold runs its real pipeline
(single-sequence MSA, features, model loading) up to the first
``runner.process_features``, where the toy runner raises :class:`ToyStop`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import offline_workdir

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from af2cpu_plugin import cli  # noqa: E402
from af2cpu_plugin.hooks import UsageError, colabfold_seam, hookimpl  # noqa: E402
from af2cpu_plugin.hooks.manager import backend_names, get_plugin_manager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUERY = ">toy\nMKTAYIAKQRQISFVKSHFSRQ\n"
COMPLEX_QUERY = ">ab\nMKTAYIAKQR:MKTAYIAKQR\n"


class ToyStop(Exception):
    """Raised by the toy runner to stop ColabFold before any prediction."""


class ToyRunner:
    def __init__(self, config, params):
        self.config, self.params, self.multimer_mode = config, params, False

    def process_features(self, raw, random_seed):
        raise ToyStop(sorted(raw))


class ToyBackend:
    """A complete backend plugin; registered through ``extra_plugins``."""

    name = "toy"

    def __init__(self):
        self.calls = []

    @hookimpl
    def af2cpu_backends(self):
        return [self.name]

    @hookimpl
    def af2cpu_provides_model(self, backend):
        return True if backend == self.name else None

    @hookimpl
    def af2cpu_prepare_params(self, backend, data_dir, model_type, model_number):
        if backend != self.name:
            return None
        self.calls.append(("prepare_params", model_type, int(model_number)))
        return {"toy": {"weights": np.zeros(1, np.float32)}}

    @hookimpl
    def af2cpu_make_runner(self, backend, config, params, extended_ptm_config, args):
        if backend != self.name:
            return None
        self.calls.append(("make_runner", args.backend, args.precision, sorted(extended_ptm_config)))
        return ToyRunner(config, params)


# The same backend as an installed distribution's entry point.
TOY_EP_MODULE = '''
import numpy as np
from af2cpu_plugin.hooks import hookimpl

CALLS = []

class ToyStop(Exception):
    pass

class Runner:
    def __init__(self, config, params):
        self.config, self.params, self.multimer_mode = config, params, False
    def process_features(self, raw, random_seed):
        raise ToyStop("stop")

@hookimpl
def af2cpu_backends():
    return ["toyep"]

@hookimpl
def af2cpu_provides_model(backend):
    return True if backend == "toyep" else None

@hookimpl
def af2cpu_prepare_params(backend):
    return {"toy": {"weights": np.zeros(1)}} if backend == "toyep" else None

@hookimpl
def af2cpu_make_runner(backend, config, params):
    if backend != "toyep":
        return None
    CALLS.append("make_runner")
    return Runner(config, params)
'''


@pytest.fixture
def workdir(tmp_path):
    """A query, a complex, and a data dir whose download marker stops any fetch."""
    return offline_workdir(tmp_path, **{"query.fasta": QUERY, "complex.fasta": COMPLEX_QUERY})


def _seams():
    from alphafold.model import model as af_model
    from colabfold import batch
    from colabfold.alphafold import models as cf_models

    return {
        "run": batch.run,
        "write_bibtex": batch.write_bibtex,
        "relax_me": batch.relax_me,
        "predict_structure": batch.predict_structure,
        "ArgumentParser": batch.ArgumentParser,
        "RunModel": af_model.RunModel,
        "get_model_haiku_params": cf_models.get_model_haiku_params,
    }


def _batch_argv(workdir, *extra, query="query.fasta"):
    return [
        "batch", "--msa-mode", "single_sequence", "--data", str(workdir / "data"),
        "--num-models", "1", *extra, str(workdir / query), str(workdir / "out"),
    ]


def _run_cli(args, cwd=REPO, in_process=True, **env_vars):
    """``af2cpu ARGS``: its exit status, stdout and stderr.

    In this process by default (what a subprocess would print, without 5 s of imports per case on a slow
    CPU; an exception that would be a traceback fails the test), or as a subprocess, as a user starts it
    (``in_process=False``, and always with ``env_vars``).
    """
    if in_process and not env_vars:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "af2cpu_plugin", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )


# ---------------------------------------------------------------------------
# plugin manager
# ---------------------------------------------------------------------------


def test_builtin_backends_registered_once():
    pm = get_plugin_manager()
    names = backend_names(pm)
    assert names.count("cpu") == 1 and names.count("jax") == 1
    assert pm.get_plugin("cpu") is not None and pm.get_plugin("jax") is not None
    # Calling again (entry points already seen) must not raise on duplicates.
    get_plugin_manager()


def test_extra_plugin_backend_selected(workdir):
    toy = ToyBackend()
    assert "toy" in backend_names(get_plugin_manager([toy]))
    before = _seams()
    argv_before = list(sys.argv)
    with pytest.raises(ToyStop):
        cli.main(_batch_argv(workdir, "--backend", "toy"), extra_plugins=[toy])
    kinds = [c[0] for c in toy.calls]
    assert ("make_runner", "toy", "fp32", ["calc_extended_ptm", "use_probs_extended"]) in toy.calls
    # ColabFold loads all five models' params even with --num-models 1.
    assert sorted(c[2] for c in toy.calls if c[0] == "prepare_params") == [1, 2, 3, 3, 4, 5]
    assert kinds.count("make_runner") == 1
    # Every seam is restored, even though the run ended in an exception.
    assert _seams() == before
    assert sys.argv == argv_before
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert config["backend"] == "toy"
    assert config["precision"] == "fp32"
    assert config["af2cpu_version"]
    assert config["model_type"] == "alphafold2_ptm"


def test_entry_point_backend_selected(workdir, tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "toy_af2cpu-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-af2cpu\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[af2cpu.backends]\ntoyep = toy_af2cpu_backend\n")
    (site / "toy_af2cpu_backend.py").write_text(textwrap.dedent(TOY_EP_MODULE))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "toy_af2cpu_backend", raising=False)

    pm = get_plugin_manager()
    assert "toyep" in backend_names(pm)
    assert pm.get_plugin("toyep") is sys.modules["toy_af2cpu_backend"]
    module = sys.modules["toy_af2cpu_backend"]
    with pytest.raises(module.ToyStop):
        cli.main(_batch_argv(workdir, "--backend", "toyep"))
    assert module.CALLS == ["make_runner"]


# ---------------------------------------------------------------------------
# the seam
# ---------------------------------------------------------------------------


def test_jax_seam_is_identity_and_restored():
    pm = get_plugin_manager()
    before = _seams()
    args = argparse.Namespace(precision="bf16", threads=None, use_fast_kernels=False)
    with colabfold_seam.installed(pm, "jax", args):
        now = _seams()
        for name in ("run", "RunModel", "get_model_haiku_params", "ArgumentParser"):
            assert now[name] is before[name], name
        assert now["write_bibtex"] is not before["write_bibtex"]  # the config.json record
        assert now["relax_me"] is not before["relax_me"]  # and the relax guard, nothing else
    assert _seams() == before


def test_jax_fp32_only_sets_use_bfloat16(monkeypatch):
    from colabfold import batch

    seen = {}
    monkeypatch.setattr(batch, "run", lambda *a, **kw: seen.update(kw))  # stand-in for ColabFold's run
    pm = get_plugin_manager()
    before = _seams()
    args = argparse.Namespace(precision="fp32", threads=None, use_fast_kernels=False)
    with colabfold_seam.installed(pm, "jax", args):
        assert _seams()["RunModel"] is before["RunModel"]
        assert _seams()["get_model_haiku_params"] is before["get_model_haiku_params"]
        assert batch.run is not before["run"]
        batch.run(queries=[], result_dir="x")
    assert seen == {"queries": [], "result_dir": "x", "use_bfloat16": False}
    assert _seams() == before


def test_cpu_seam_patches_model_and_restores():
    pm = get_plugin_manager()
    before = _seams()
    args = argparse.Namespace(precision="fp32", threads=1, subbatch_size=None)
    with colabfold_seam.installed(pm, "cpu", args):
        now = _seams()
        assert now["RunModel"] is not before["RunModel"]
        assert now["get_model_haiku_params"] is not before["get_model_haiku_params"]
        assert now["run"] is not before["run"]
    assert _seams() == before


@pytest.mark.parametrize("backend, expected", [("cpu", 0), ("jax", 110)])
def test_cpu_runs_each_query_at_its_own_length(monkeypatch, backend, expected):
    """ColabFold pads a query to a longer length so that XLA compiles once for several; the eager cpu engine
    would only pay for the padded residues, so its predict_structure gets pad_len 0. JAX keeps the padding."""
    from colabfold import batch

    seen = []

    def predict_structure(prefix, result_dir, feature_dict, **kw):
        seen.append(kw["pad_len"])
        return {"result_files": []}

    monkeypatch.setattr(batch, "predict_structure", predict_structure)
    args = argparse.Namespace(precision="fp32", threads=1, subbatch_size=None, use_fast_kernels=False)
    with colabfold_seam.installed(get_plugin_manager(), backend, args):
        batch.predict_structure("len100", "out", {}, pad_len=110, sequences_lengths=[100])
    assert seen == [expected]
    assert batch.predict_structure is predict_structure  # restored


def test_seam_restores_on_error():
    pm = get_plugin_manager()
    before = _seams()
    args = argparse.Namespace(precision="fp32", threads=1, subbatch_size=None)
    with pytest.raises(KeyError):
        with colabfold_seam.installed(pm, "cpu", args):
            raise KeyError("boom")
    assert _seams() == before


def test_missing_params_file_is_usage_error(tmp_path):
    pm = get_plugin_manager()
    args = argparse.Namespace(precision="fp32", threads=1, subbatch_size=None)
    from colabfold.alphafold import models as cf_models

    with colabfold_seam.installed(pm, "cpu", args):
        with pytest.raises(UsageError, match="params_model_3_ptm.npz not found"):
            cf_models.get_model_haiku_params(
                data_dir=str(tmp_path), model_type="alphafold2_ptm", model_number=3, use_fuse=True
            )


def test_record_is_atomic_update(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "alphafold2_ptm"}))
    colabfold_seam.record(tmp_path, {"backend": "cpu", "threads": 2})
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model_type": "alphafold2_ptm", "backend": "cpu", "threads": 2,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left


def test_params_file_names_match_colabfold():
    assert colabfold_seam.params_file_name("alphafold2_ptm", 3) == "params_model_3_ptm.npz"
    assert colabfold_seam.params_file_name("alphafold2", 1) == "params_model_1.npz"
    assert colabfold_seam.params_file_name("alphafold2_multimer_v3", 2) == "params_model_2_multimer_v3.npz"
    with pytest.raises(ValueError):
        colabfold_seam.params_file_name("nope", 1)


def test_default_threads_within_affinity():
    from af2cpu_plugin.hooks.cpu_backend import default_threads

    n = default_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_cpu_runner_path(tmp_path):
    """The cpu make_runner hook builds the engine's CpuRunModel (skipped until it exists)."""
    pytest.importorskip("af2cpu_plugin.runner")
    pytest.importorskip("af2cpu_plugin.engine.policy")
    from af2cpu_plugin.hooks import cpu_backend

    created = {}

    class Fake:
        def __init__(self, config, params=None, **kw):
            created.update(kw, config=config, params=params)

    import af2cpu_plugin.runner as runner_mod

    original = runner_mod.CpuRunModel
    runner_mod.CpuRunModel = Fake
    try:
        args = argparse.Namespace(precision="fp32", threads=1, subbatch_size=None)
        cpu_backend.af2cpu_make_runner(
            backend="cpu", config="cfg", params={"p": {}}, extended_ptm_config={"x": 1}, jit_kwargs={}, args=args,
        )
    finally:
        runner_mod.CpuRunModel = original
    assert created["config"] == "cfg" and created["extended_ptm_config"] == {"x": 1}
    assert created["policy"].precision == "fp32" and created["policy"].threads == 1


# ---------------------------------------------------------------------------
# the command line (what a user sees: in this process, or as a subprocess where the entry point matters)
# ---------------------------------------------------------------------------


def test_help_lists_colabfold_and_af2cpu_options():
    result = _run_cli(["batch", "--help"], in_process=False)  # the installed entry point, as a user runs it
    assert result.returncode == 0, result.stderr
    for option in ("--num-recycle", "--amber", "--msa-mode", "--backend", "--threads", "--precision"):
        assert option in result.stdout, option
    assert "af2cpu batch" in result.stdout
    # ColabFold's padding option says which backend it applies to (the cpu engine runs every query unpadded).
    assert "--backend cpu compiles nothing" in " ".join(result.stdout.split()), result.stdout


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--use-gpu-relax"], "--use-gpu-relax"),
        (["--kernels", "ipex"], "--kernels"),  # IPEX lives in its own venv, not in the test venv
        (["--model-type", "deepfold_v1"], "--model-type"),
        (["--num-ensemble", "2"], "--num-ensemble"),
        (["--use-dropout"], "--use-dropout"),
    ],
)
def test_cpu_refusals_are_one_line(workdir, extra, option):
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", *extra))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("af2cpu: error: ") and option in errors[0] and " — " in errors[0]
    assert not (workdir / "out").exists()  # refused before ColabFold started


def test_native_kernels_that_cannot_build_are_one_line(workdir):
    """--kernels native where the kernel cannot be built (here: its cache dir cannot be made) is refused in one
    line; --kernels auto falls back to PyTorch's kernels instead (kernels.status)."""
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", "--kernels", "native"),
                      AF2CPU_KERNELS_DIR="/dev/null/kernels")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "--kernels native" in errors[0] and "--kernels auto or stock" in errors[0], errors


def test_unknown_precision_is_one_line_naming_the_valid_values(workdir):
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", "--precision", "fp16"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "--precision" in errors[0], result.stderr
    assert all(name in errors[0] for name in ("auto", "fp32", "bf16")), errors[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--templates", "--custom-template-path", "{w}/nope"], "--custom-template-path {w}/nope not found"),
        (["--templates", "--custom-template-path", "{w}/query.fasta"], "is not a directory"),
        (["--templates", "--pdb-hit-file", "{w}/nope.m8", "--local-pdb-path", "{w}"], "--pdb-hit-file {w}/nope.m8"),
        (["--templates", "--pdb-hit-file", "{w}/query.fasta"], "--pdb-hit-file needs --local-pdb-path"),
        (["--templates", "--pdb-hit-file", "{w}/query.fasta", "--custom-template-path", "{w}"], "cannot be used"),
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "jax"])
def test_bad_template_options_are_one_line(workdir, backend, extra, message):
    """Template options are served on --backend cpu; what cannot run is one line, before ColabFold starts."""
    extra = [x.format(w=workdir) for x in extra]
    result = _run_cli(_batch_argv(workdir, "--backend", backend, *extra))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("af2cpu: error: ") and message.format(w=workdir) in errors[0] and " — " in errors[0]
    assert not (workdir / "out").exists()


def test_templates_accepted_on_cpu(tmp_path):
    from af2cpu_plugin.hooks import cpu_backend

    args = argparse.Namespace(
        templates=True, custom_template_path="tpl", pdb_hit_file=None, model_type="auto", use_gpu_relax=False,
        num_ensemble=1, use_dropout=False, use_fast_kernels=False, precision="fp32", threads=1, subbatch_size=None,
    )
    assert cpu_backend.af2cpu_check_request(
        backend="cpu", args=args, model_type="alphafold2_ptm", is_complex=False
    ) is None


def test_template_check_empty_dir_drops_templates(tmp_path):
    from af2cpu_plugin.hooks import template_check

    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "1bad.cif").write_text("garbage\n")
    args = argparse.Namespace(templates=True, custom_template_path=str(tmp_path / "tpl"), pdb_hit_file=None,
                              results=str(tmp_path / "out"))
    lines = []
    check = template_check.check_templates(args, warn=lines.append)
    assert args.templates is False and args.custom_template_path is None
    assert check.used is None and list(check.skipped) == ["1bad.cif"]
    assert "'data_'" in lines[0] and lines[-1].endswith("running without templates")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sequence", ["MKTAYIAKQR::MKTAYIAKQR", "MKTAYIAKQR:", ":MKTAYIAKQR"])
def test_empty_chain_is_one_line(workdir, sequence):
    """A complex with an empty chain is refused before ColabFold starts, naming the query and the fix."""
    (workdir / "empty.fasta").write_text(f">job1\n{sequence}\n")
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", query="empty.fasta"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "'job1' has an empty chain" in errors[0] and "single ':'" in errors[0], errors
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("name, text, expected", [
    ("empty.fasta", "", "holds no sequences"),
    ("noseq.fasta", ">job1\n", "'job1' has no sequence"),
    ("header.csv", "id,sequence\n", "holds no sequences"),
    ("blank.csv", "id,sequence\njob1,\n", "has no sequence"),
    ("stop.fasta", ">job1\nMKTAYIAK*QRQ\n", "'job1' has '*' at position 9"),
    ("digit.fasta", ">job1\nMKTAY1AK\n", "'job1' has '1' at position 6"),
    ("chain.fasta", ">job1\nMKTAYIAK:MKT-YIAK\n", "'job1', chain 2, has '-' at position 4"),
])
def test_bad_sequences_are_one_line(workdir, name, text, expected):
    """Empty inputs, records without a sequence and letters that are not residues are refused before
    ColabFold starts (which would trace back, or skip the query and exit 0): one line naming the record and
    the position, and the fix; nothing written."""
    (workdir / name).write_text(text)
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", query=name))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0] and " — " in errors[0], errors
    assert not (workdir / "out").exists()


def test_debug_shows_the_traceback_above_the_one_line(workdir):
    (workdir / "stop.fasta").write_text(">job1\nMKTAYIAK*QRQ\n")
    quiet = _run_cli(_batch_argv(workdir, "--backend", "cpu", query="stop.fasta"))
    loud = _run_cli(_batch_argv(workdir, "--backend", "cpu", "--debug", query="stop.fasta"))
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr and "BadQuery" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip().splitlines()[-1]


def test_rare_letters_are_accepted_as_colabfold_does(workdir):
    """B, J, O, U and Z (ColabFold reads them as X) and lower case pass the input check."""
    from af2cpu_plugin.hooks import colabfold_seam

    (workdir / "rare.fasta").write_text(">job1\nMKTBJOUXZmkt\n")
    args = argparse.Namespace(input=str(workdir / "rare.fasta"), sort_queries_by="none", model_type="auto")
    assert colabfold_seam.resolve_model_type(args) == ("alphafold2_ptm", False)


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_results_path_that_is_a_file_is_one_line(workdir, kind):
    (workdir / "taken").write_text("not a dir")
    out = workdir / "taken" if kind == "file" else workdir / "taken" / "out"
    argv = _batch_argv(workdir, "--backend", "cpu")
    argv[-1] = str(out)
    result = _run_cli(argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "not a directory — pass a directory for the results" in result.stderr
    assert (workdir / "taken").read_text() == "not a dir"


@pytest.mark.parametrize("extra", [[], ["--model-type", "alphafold2_multimer_v2"]])
def test_complex_with_multimer_is_accepted(workdir, extra):
    """A:B with --model-type auto (multimer v3) or a multimer type passes the checks on --backend cpu
    (fails later only on missing params: the download markers stop any fetch)."""
    version = extra[-1].rsplit("_", 1)[1] if extra else "v3"
    (workdir / "data" / "params" / f"download_complexes_multimer_{version}_finished.txt").write_text("")
    result = _run_cli(_batch_argv(workdir, "--backend", "cpu", *extra, query="complex.fasta"))
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    suffix = "" if version == "v1" else f"_{version}"
    assert f"_multimer{suffix}.npz not found" in result.stderr.splitlines()[-1], result.stderr


def test_complex_with_ptm_is_accepted(workdir):
    """A:B with --model-type alphafold2_ptm passes the checks (fails later only on missing params)."""
    result = _run_cli(_batch_argv(workdir, "--model-type", "alphafold2_ptm", query="complex.fasta"))
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert "params_model_3_ptm.npz not found" in result.stderr.splitlines()[-1]


def test_missing_input_is_one_line(workdir):
    result = _run_cli(["batch", str(workdir / "nope.fasta"), str(workdir / "out")])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("af2cpu: error: input ")


def test_unknown_command_and_version():
    assert _run_cli(["frobnicate"], in_process=False).returncode == 2
    result = _run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.startswith("af2cpu ")


def test_hooks_not_a_top_level_package(tmp_path):
    code = (
        "import importlib.util, af2cpu_plugin.hooks, af2cpu_plugin.hooks.hookspecs;"
        "assert importlib.util.find_spec('hooks') is None, 'hooks importable top-level';"
        "assert importlib.util.find_spec('converters') is None, 'converters importable top-level'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
