"""The only module that touches ColabFold's internals.

ColabFold 1.6.3 has no plugin interface, so af2cpu swaps module attributes
for the duration of one ``colabfold.batch.main()`` call and always restores
them. Each seam is a name ColabFold looks up at call time:

* ``colabfold.batch.ArgumentParser`` — ``main()`` builds its parser inline;
  a subclass adds af2cpu's options right before ``parse_args`` (see
  :func:`colabfold_main`).
* ``colabfold.batch.run`` — ``main()`` calls it by module-global name; the
  wrapper merges :func:`~hookspecs.af2cpu_run_kwargs` (``use_bfloat16``...),
  keywords ``colabfold_batch`` cannot set.
* ``alphafold.model.model.RunModel`` — ``load_models_and_params`` calls
  ``model.RunModel(...)`` through the module attribute; the factory asks
  :func:`~hookspecs.af2cpu_make_runner`.
* ``colabfold.alphafold.models.get_model_haiku_params`` — a module global of
  the module that calls it; the wrapper asks
  :func:`~hookspecs.af2cpu_prepare_params`.
* ``colabfold.batch.write_bibtex`` — see :func:`_record_wrapper`.
* ``colabfold.batch.relax_me`` and ``predict_structure`` — a failed Amber
  relax keeps the unrelaxed model (:func:`_guarded_relax`).

The last two model seams are installed only when the backend provides the
model (:func:`~hookspecs.af2cpu_provides_model`); ``run`` only when some
plugin has keywords for it. So for ``--backend jax`` (default bf16) the only
patches are the ``config.json`` record and the relax guard.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from af2cpu_plugin.atomic import atomic_write_bytes
from af2cpu_plugin.hooks.errors import UsageError
from af2cpu_plugin.hooks.manager import merged

# ---------------------------------------------------------------------------
# ColabFold's naming, kept in one place
# ---------------------------------------------------------------------------

#: colabfold.alphafold.models.get_model_haiku_params: model type -> npz name
#: pattern in ``<data>/params/``.
PARAMS_FILE_PATTERNS = {
    "alphafold2_ptm": "params_model_{n}_ptm.npz",
    "alphafold2": "params_model_{n}.npz",
    "alphafold2_multimer_v1": "params_model_{n}_multimer.npz",
    "alphafold2_multimer_v2": "params_model_{n}_multimer_v2.npz",
    "alphafold2_multimer_v3": "params_model_{n}_multimer_v3.npz",
    "deepfold_v1": "deepfold_model_{n}.npz",
}


def params_file_name(model_type: str, model_number: Any) -> str:
    """The npz file ColabFold reads for a model, e.g. ``params_model_3_ptm.npz``."""
    try:
        return PARAMS_FILE_PATTERNS[model_type].format(n=model_number)
    except KeyError:
        raise ValueError(f"Unknown model_type {model_type}") from None


def params_path(data_dir: Any, model_type: str, model_number: Any) -> Path:
    """``<data_dir>/params/<file>`` as ColabFold's get_model_haiku_params builds it."""
    return Path(data_dir) / "params" / params_file_name(model_type, model_number)


def resolve_model_type(args: Any) -> Tuple[str, bool]:
    """``(model_type, is_complex)`` exactly as ``colabfold.batch.main()`` will decide them.

    Reads the queries with ColabFold's own ``get_queries`` (cheap: no MSA) and
    resolves ``--model-type auto`` with ``set_model_type``. A complex with an
    empty chain (``A::B``, a trailing ``:``), which ColabFold would only trip
    over deep in feature building, is a ``ValueError`` naming the query.
    """
    from colabfold import batch

    try:
        queries, is_complex = batch.get_queries(args.input, args.sort_queries_by)
    except (AttributeError, TypeError) as exc:  # pandas reads an empty CSV/TSV cell as a float NaN
        raise BadQuery(f"a record of {args.input} has no sequence ({exc})",
                       "give every id a sequence, or drop the record") from exc
    except IndexError as exc:  # ColabFold's parse_fasta on sequence lines before any '>' line
        raise BadQuery(f"{args.input} has sequence lines before its first '>name' line",
                       "start each record with a '>name' line, then its sequence") from exc
    if not queries:
        raise BadQuery(f"{args.input} holds no sequences",
                       "pass a FASTA/A3M file with '>name' lines, each followed by its sequence, "
                       "or a CSV/TSV with id,sequence columns")
    for job, sequences, *_ in queries:
        chains = list(sequences) if isinstance(sequences, (list, tuple)) else [sequences]
        if len(chains) > 1 and any(not c.strip() for c in chains):
            raise EmptyChain(job)
        for i, chain in enumerate(chains):
            _check_residues(job, chain, i + 1 if len(chains) > 1 else None)
    return batch.set_model_type(is_complex, args.model_type), bool(is_complex)


#: What ColabFold's feature pipeline takes: the 20 amino acids, X, and B, J, O, U, Z (which it reads as X).
RESIDUE_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_residues(job: str, chain: str, chain_number: Optional[int]) -> None:
    """A sequence ColabFold's pipeline would reject deep inside a run (or skip, exiting 0) is refused here."""
    where = f"query {job!r}" + (f", chain {chain_number}," if chain_number else "")
    if not chain.strip():
        raise BadQuery(f"{where} has no sequence", "give the record a sequence, or drop it")
    for position, letter in enumerate(chain, start=1):
        if letter.upper() not in RESIDUE_LETTERS:
            shown = repr(letter) if letter.strip() else f"whitespace {letter!r}"
            raise BadQuery(f"{where} has {shown} at position {position}, not an amino-acid letter",
                           "use one-letter codes (X for unknown); remove stop codons (*), gaps, digits and spaces")


class BadQuery(ValueError):
    """An input query ColabFold cannot fold; ``fix`` says what to change."""

    def __init__(self, what: str, fix: str) -> None:
        self.fix = fix
        super().__init__(what)


class EmptyChain(BadQuery):
    """A query whose ``:``-separated chains include an empty one."""

    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"query {job!r} has an empty chain (two ':' in a row, or a ':' at either end)",
                         "separate the chains of a complex by single ':' (A:B), with a sequence for each")


# ---------------------------------------------------------------------------
# Known errors -> UsageError
# ---------------------------------------------------------------------------


def known_error_types() -> Tuple[type, ...]:
    """Exception types of the engine/converter that mean "bad input", not "bug".

    Imported lazily: the converter and engine may be absent or broken in a
    partial install, and the CLI must still run.
    """
    types = []
    for module, name in (
        ("af2cpu_plugin.converters", "ConversionError"),
        ("af2cpu_plugin.engine.params", "ParamsMismatch"),
        ("af2cpu_plugin.runner", "NonFiniteOutput"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(t for t in types if isinstance(t, type))


def as_usage_error(exc: BaseException) -> UsageError:
    """One-line form of a known engine/converter error."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if " — " in text:  # the message already says what to do
        what, _, fix = text.partition(" — ")
        return UsageError(what, fix, 1)
    if name == "ParamsMismatch":
        return UsageError(text, "the params file does not match --model-type; check --data and --model-type", 1)
    if name == "ConversionError":  # one without its own " — fix" (a layout the converter cannot read)
        return UsageError(f"could not convert params: {text}", "download the weights again or check --data", 1)
    return UsageError(text, exit_code=1)


def _tidy(fn: Callable) -> Callable:
    """Re-raise known errors as UsageError.

    ColabFold's run() catches RuntimeError around model loading and skips the
    query ("Not Enough GPU memory?"); a UsageError is no RuntimeError, so it
    reaches the CLI and is printed as one line.
    """

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        known = known_error_types()
        try:
            return fn(*a, **kw)
        except UsageError:
            raise
        except Exception as exc:
            if known and isinstance(exc, known):
                raise as_usage_error(exc) from exc
            raise

    return wrapper


# ---------------------------------------------------------------------------
# config.json record
# ---------------------------------------------------------------------------


def plugin_version() -> str:
    from af2cpu_plugin import __version__

    return __version__


def record(result_dir: Any, entries: Dict[str, Any]) -> Path:
    """Add ``entries`` to ``result_dir/config.json`` atomically (temp file + ``os.replace``)."""
    path = Path(result_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = {}
    config.update(entries)
    atomic_write_bytes(path, json.dumps(config, indent=4).encode())
    return path


def _record_wrapper(original: Callable, entries: Callable[[], Dict[str, Any]]) -> Callable:
    """``write_bibtex`` that first records the backend in ``config.json``.

    Why this seam: ``run()`` writes ``config.json`` and, on the very next line,
    calls the module-global ``write_bibtex(..., result_dir)``, before any MSA
    or prediction. Recording here puts the backend in ``config.json`` even when
    the run fails later; before ``run()`` it would be overwritten, and after
    it a failed or interrupted run would have no record.
    """

    @functools.wraps(original)
    def write_bibtex(*a, **kw):
        result_dir = kw["result_dir"] if "result_dir" in kw else a[5]
        record(result_dir, entries())
        return original(*a, **kw)

    return write_bibtex


# ---------------------------------------------------------------------------
# Amber relax that fails keeps the unrelaxed model and the run goes on
# ---------------------------------------------------------------------------

#: First line of a relaxed-PDB slot whose relax failed; the file is removed once ColabFold has renamed it.
RELAX_FAILED = "REMARK 250 AF2CPU: AMBER RELAX FAILED, COORDINATES NOT RELAXED"

logger = logging.getLogger(__name__)


def _guarded_relax(original: Callable) -> Callable:
    """``relax_me`` that never ends the run.

    ColabFold relaxes the top models inside ``predict_structure``'s ranking
    loop, between renaming one model's files and the next; OpenMM's
    "Minimization failed after 100 attempts" (a ValueError, which ``run()``
    does not catch) would end the whole batch there, with the query's files
    half renamed. Instead the slot gets the unrelaxed lines behind a
    :data:`RELAX_FAILED` header, which :func:`_dropping_failed_relaxes`
    removes once the ranking is done. The header keeps the file honest if
    the process dies in between.
    """

    @functools.wraps(original)
    def relax_me(*a, **kw):
        try:
            return original(*a, **kw)
        except Exception as exc:  # relax is a finishing step: any failure keeps the unrelaxed model
            reason = " ".join(str(exc).split()) or type(exc).__name__
            lines = kw.get("pdb_lines") or (Path(kw["pdb_filename"]).read_text() if kw.get("pdb_filename") else "")
            return f"{RELAX_FAILED}\nREMARK 250 {reason[:60]}\n{lines}"

    return relax_me


def _dropping_failed_relaxes(original: Callable) -> Callable:
    """``predict_structure`` that removes the relaxed-PDB slots of models whose relax failed, saying so."""

    @functools.wraps(original)
    def predict_structure(prefix, *a, **kw):
        results = original(prefix, *a, **kw)
        kept = []
        for path in results["result_files"]:
            path = Path(path)
            if "_relaxed_" in path.name and path.suffix == ".pdb" and _relax_failed(path):
                reason = path.read_text().splitlines()[1][len("REMARK 250 "):].strip()
                path.unlink()
                unrelaxed = path.name.replace("_relaxed_", "_unrelaxed_", 1)
                logger.warning(f"{prefix}: Amber relax failed for {path.stem.split('_relaxed_', 1)[1]} ({reason}); "
                               f"kept the unrelaxed structure {unrelaxed}")
                continue
            kept.append(path)
        results["result_files"] = kept
        return results

    return predict_structure


def _unpadded(original: Callable) -> Callable:
    """``predict_structure`` that runs each query at its own length: ColabFold's ``pad_len`` (its recompile
    padding, which only spares XLA a compilation and also pads the MSA rows) set to 0, for a backend that
    compiles nothing. The results are the padded run's to rounding (amplified by recycling): the padded rows
    and residues are masked out everywhere, and ColabFold crops them from every output."""

    @functools.wraps(original)
    def predict_structure(prefix, *a, **kw):
        kw["pad_len"] = 0
        return original(prefix, *a, **kw)

    return predict_structure


def _relax_failed(path: Path) -> bool:
    with open(path) as handle:
        return handle.readline().rstrip("\n") == RELAX_FAILED


# ---------------------------------------------------------------------------
# Multi-instance runs: ColabFold's run() twice (af2cpu_plugin.scheduler)
# ---------------------------------------------------------------------------

_PLANNED = "af2cpu: predictions queued"


class _Planned(RuntimeError):
    """Raised by the plan pass's ``predict_structure``: ``run()`` catches RuntimeError there and goes on
    to the next query, writing nothing more for this one (no plots, no done marker)."""

    def __init__(self) -> None:
        super().__init__(_PLANNED)


class _DropPlanned(logging.Filter):
    """The plan pass's skipped queries are not errors: drop run()'s "Could not predict" line for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _PLANNED not in record.getMessage()


def prediction_inputs(feature_dict, model_type, model_runner_and_params, random_seed=0, num_seeds=1,
                      pad_len=0, sequences_lengths=(), use_templates=False, msa_pad_depth=0, initial_guess=None,
                      **_ignored) -> Iterator[Tuple[str, Any, Any, int, Dict[str, Any]]]:
    """``(model_name, runner, params, seed, input_features)`` for each prediction, in ``predict_structure``'s
    order, with the input features it makes (colabfold 1.6.3, batch.py lines 450-495).

    The monomer's features are processed once per seed by the first model's runner and shared by the
    others; the multimer's are the raw features, asym_id rebased, MSA padded to ``msa_pad_depth``. The
    write pass checks each prediction's inputs against these (a fingerprint), so a mismatch can only
    cost speed (the prediction is computed again where it is needed), never a wrong result.
    """
    from alphafold.common import protein
    from colabfold import batch

    seq_len = sum(sequences_lengths)
    input_features = None
    for seed_num, seed in enumerate(range(random_seed, random_seed + num_seeds)):
        for model_num, (model_name, runner, params) in enumerate(model_runner_and_params):
            if "multimer" in model_type:
                if model_num == 0 and seed_num == 0:
                    input_features = dict(feature_dict)
                    input_features["asym_id"] = input_features["asym_id"] - input_features["asym_id"][..., 0]
                    if msa_pad_depth > input_features["msa"].shape[0]:
                        input_features = batch.pipeline_multimer.pad_msa(input_features, min_num_seq=msa_pad_depth)
            elif model_num == 0:
                input_features = runner.process_features(feature_dict, random_seed=seed)
                r = input_features["aatype"].shape[0]
                input_features["asym_id"] = np.tile(feature_dict["asym_id"], r).reshape(r, -1)
                if seq_len < pad_len:
                    input_features = batch.pad_input(input_features, runner, model_name, pad_len, use_templates)
            if initial_guess:
                guess = Path(initial_guess)
                text = batch.pdb_to_string(initial_guess) if guess.suffix == ".pdb" else guess.read_text()
                parse = protein.from_pdb_string if guess.suffix == ".pdb" else protein.from_mmcif_string
                input_features["all_atom_positions"] = parse(text).atom_positions
            yield model_name, runner, params, seed, input_features


def _model_number(model_name: str) -> str:
    return model_name.rsplit("_", 1)[-1]  # ColabFold's runners are named "model_<n>"


def _planning_predict_structure(orchestrator: Any, data_dir: Any) -> Callable:
    def predict_structure(prefix, result_dir, feature_dict, **kw):
        whole = bool(kw.get("save_recycles") or kw.get("save_all"))
        representations = bool(kw.get("save_all") or kw.get("save_single_representations")
                               or kw.get("save_pair_representations"))
        for model_name, runner, params, seed, features in prediction_inputs(feature_dict, **kw):
            orchestrator.plan(prefix=prefix, model_name=model_name, seed=seed, runner=runner, features=features,
                              params_path=params_path(data_dir, kw["model_type"], _model_number(model_name)),
                              result_dir=Path(result_dir), return_representations=representations,
                              whole_recycles=whole, param_keys=tuple(params.keys()))
        raise _Planned()

    return predict_structure


class _Replayed:
    """A model runner whose ``predict`` takes the planned prediction's result from the orchestrator (and
    replays ColabFold's per-recycle callback from it); it computes the prediction itself only when the
    orchestrator has none. Everything else is the wrapped runner's."""

    def __init__(self, runner: Any, prefix: str, model_name: str, orchestrator: Any) -> None:
        self._runner, self._prefix, self._model_name, self._orchestrator = runner, prefix, model_name, orchestrator
        self._pending_params = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    @property
    def params(self) -> Any:
        return self._pending_params

    @params.setter
    def params(self, params: Any) -> None:
        self._pending_params = params  # bound only if this process computes the prediction

    def predict(self, feat, random_seed=0, return_representations=False, callback=None):
        done = self._orchestrator.fetch(self._prefix, self._model_name, random_seed, feat)
        if done is None:
            self._runner.params = self._pending_params
            out = self._runner.predict(feat, random_seed=random_seed,
                                       return_representations=return_representations, callback=callback)
            self._orchestrator.computed_here(self._prefix, self._model_name, random_seed)
            return out
        result, recycles, per_recycle = done
        if callback is not None:
            for r, seen in enumerate(per_recycle):
                callback(dict(seen), r)
        return result, recycles


def _replaying_predict_structure(original: Callable, orchestrator: Any) -> Callable:
    @functools.wraps(original)
    def predict_structure(prefix, result_dir, feature_dict, **kw):
        kw["model_runner_and_params"] = [(name, _Replayed(runner, prefix, name, orchestrator), params)
                                         for name, runner, params in kw["model_runner_and_params"]]
        return original(prefix, result_dir, feature_dict, **kw)

    return predict_structure


def _memoized(original: Callable) -> Callable:
    """``get_msa_and_templates`` computed once per argument set: the write pass reuses the plan pass's MSAs
    (an MSA server is asked once per query, as in a single pass); each caller gets its own copy."""
    cache: Dict[str, Any] = {}

    @functools.wraps(original)
    def get_msa_and_templates(*a, **kw):
        key = repr((a, sorted(kw.items())))
        if key not in cache:
            cache[key] = original(*a, **kw)
        return copy.deepcopy(cache[key])

    return get_msa_and_templates


def _two_pass_run(original_run: Callable, orchestrator: Any, unpadded: bool = False) -> Callable:
    """``run()`` for a multi-instance batch: plan every prediction, start them, then ColabFold's run() again
    writing each query's outputs as its predictions come back. ``unpadded``: plan each query at its own
    length, as the write pass's ``predict_structure`` (:func:`_unpadded`) will make its inputs."""
    from colabfold import batch

    @functools.wraps(original_run)
    def run(*a, **kw):
        arguments = inspect.signature(original_run).bind(*a, **kw)
        arguments.apply_defaults()
        data_dir = arguments.arguments["data_dir"]
        cf_logger = logging.getLogger(batch.__name__)
        drop = _DropPlanned()
        try:
            orchestrator.prestart()
            with contextlib.ExitStack() as stack:
                stack.enter_context(_patched(batch, "get_msa_and_templates", _memoized(batch.get_msa_and_templates)))
                planning = _planning_predict_structure(orchestrator, data_dir)
                with _patched(batch, "predict_structure", _unpadded(planning) if unpadded else planning):
                    cf_logger.addFilter(drop)
                    try:
                        original_run(*a, **kw)
                    finally:
                        cf_logger.removeFilter(drop)
                orchestrator.start()
                stack.enter_context(_patched(batch, "predict_structure",
                                             _replaying_predict_structure(batch.predict_structure, orchestrator)))
                out = original_run(*a, **kw)
            orchestrator.finish()
            return out
        finally:
            orchestrator.close()

    return run


# ---------------------------------------------------------------------------
# Installing the seams
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def installed(pm: Any, backend: str, args: Any) -> Iterator[None]:
    """Route ColabFold through ``backend`` while the block runs; always restore.

    ``args`` is the parsed ``af2cpu batch`` namespace (needs ``precision`` and
    ``threads``; everything else is passed on to the hooks).
    """
    from alphafold.model import model as af_model
    from colabfold import batch
    from colabfold.alphafold import models as cf_models

    hook = pm.hook

    def entries() -> Dict[str, Any]:
        out = {
            "backend": backend,
            "precision": getattr(args, "precision", None),
            "threads": getattr(args, "threads", None),
            "af2cpu_version": plugin_version(),
        }
        out.update(merged(hook.af2cpu_record(backend=backend, args=args)))
        return out

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(batch, "write_bibtex", _record_wrapper(batch.write_bibtex, entries)))
        stack.enter_context(_patched(batch, "relax_me", _guarded_relax(batch.relax_me)))
        stack.enter_context(_patched(batch, "predict_structure", _dropping_failed_relaxes(batch.predict_structure)))
        unpadded = hook.af2cpu_pads_lengths(backend=backend) is False
        if unpadded:
            stack.enter_context(_patched(batch, "predict_structure", _unpadded(batch.predict_structure)))

        run_kwargs = merged(hook.af2cpu_run_kwargs(backend=backend, args=args))
        if run_kwargs:
            original_run = batch.run

            @functools.wraps(original_run)
            def run(*a, **kw):
                kw.update(run_kwargs)
                return original_run(*a, **kw)

            stack.enter_context(_patched(batch, "run", run))

        orchestrator = hook.af2cpu_multi_instance(backend=backend, args=args)
        if orchestrator is not None:
            stack.enter_context(_patched(batch, "run", _two_pass_run(batch.run, orchestrator, unpadded)))

        if hook.af2cpu_provides_model(backend=backend):
            original_run_model = af_model.RunModel
            original_get_params = cf_models.get_model_haiku_params

            @_tidy
            def run_model_factory(config, params=None, is_training=False, extended_ptm_config=None, jit_kwargs=None):
                runner = hook.af2cpu_make_runner(
                    backend=backend,
                    config=config,
                    params=params,
                    extended_ptm_config=extended_ptm_config,
                    jit_kwargs=jit_kwargs,
                    args=args,
                )
                if runner is None:
                    runner = original_run_model(
                        config, params, is_training=is_training,
                        extended_ptm_config=extended_ptm_config, jit_kwargs=jit_kwargs,
                    )
                return runner

            @_tidy
            def get_model_haiku_params(data_dir, model_type, model_number, use_fuse=True, to_jnp=True):
                params = hook.af2cpu_prepare_params(
                    backend=backend,
                    data_dir=data_dir,
                    model_type=model_type,
                    model_number=model_number,
                    use_fuse=use_fuse,
                    args=args,
                )
                if params is None:
                    params = original_get_params(data_dir, model_type, model_number, use_fuse=use_fuse, to_jnp=to_jnp)
                return params

            stack.enter_context(_patched(af_model, "RunModel", run_model_factory))
            stack.enter_context(_patched(cf_models, "get_model_haiku_params", get_model_haiku_params))
        yield


# ---------------------------------------------------------------------------
# ColabFold's main() with af2cpu's options
# ---------------------------------------------------------------------------


def colabfold_main(
    argv: list,
    prog: str,
    extend_parser: Callable[[Any], None],
    on_parsed: Callable[[Any], None],
) -> Any:
    """Run ``colabfold.batch.main()`` on ``argv`` with af2cpu's options.

    ``main()`` builds its ``ArgumentParser`` inline, adds its options, then
    calls ``parse_args()``. For the duration of the call
    ``colabfold.batch.ArgumentParser`` is a subclass whose ``parse_args``
    first calls ``extend_parser(parser)`` (all of ColabFold's options are
    there by then, so ``--help`` lists both) and, once parsed,
    ``on_parsed(namespace)`` — where the CLI validates and installs
    :func:`installed`. ``sys.argv`` is ``[prog] + argv`` meanwhile.
    """
    from colabfold import batch

    base = batch.ArgumentParser

    class Af2cpuArgumentParser(base):
        _af2cpu_extended = False

        def parse_args(self, args=None, namespace=None):
            if not self._af2cpu_extended:
                self._af2cpu_extended = True
                extend_parser(self)
            ns = super().parse_args(args, namespace)
            on_parsed(ns)
            return ns

    Af2cpuArgumentParser.__name__ = base.__name__
    old_argv = sys.argv
    sys.argv = [prog] + list(argv)
    try:
        with _patched(batch, "ArgumentParser", Af2cpuArgumentParser):
            return batch.main()
    finally:
        sys.argv = old_argv
