"""Hook specifications for af2cpu backends (pluggy project ``"af2cpu"``).

A *backend* decides how ColabFold's model runs; everything else (MSA,
features, ranking, outputs, plots, Amber relax) stays ColabFold's. The
``af2cpu`` command line calls these hooks in this order:

1. :func:`af2cpu_backends` — once, to build ``--backend``'s choices;
2. :func:`af2cpu_add_options` — once, to add backend options to the parser;
3. after parsing: :func:`af2cpu_defaults`, then :func:`af2cpu_check_request`;
4. while ColabFold runs (through :mod:`af2cpu_plugin.hooks.colabfold_seam`):
   :func:`af2cpu_run_kwargs` and :func:`af2cpu_provides_model` when the seam is
   installed, :func:`af2cpu_record` when ``config.json`` is written,
   :func:`af2cpu_prepare_params` for each ``params_model_N`` file and
   :func:`af2cpu_make_runner` for each model architecture ColabFold builds.

Every hook except :func:`af2cpu_backends` and :func:`af2cpu_add_options`
receives the selected ``backend`` name; an implementation answers only for
the backend(s) it provides and returns ``None`` for any other, so that several
backends live side by side in one plugin manager. ``args`` is the parsed
``argparse.Namespace`` of ``af2cpu batch``: all of ``colabfold_batch``'s
options plus ``backend``, ``precision``, ``threads`` and those added by
:func:`af2cpu_add_options`.

Like pluggy's other hooks, an implementation may accept any subset of the
arguments listed in the spec, by name. To refuse something the user can fix,
raise :class:`af2cpu_plugin.hooks.UsageError` (printed as one line).

Write an implementation with::

    from af2cpu_plugin.hooks import hookimpl

    @hookimpl
    def af2cpu_backends():
        return ["mybackend"]
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pluggy

PROJECT_NAME = "af2cpu"

#: Marks the specifications below (used only in this module).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin's implementations: ``@hookimpl def af2cpu_backends(): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@hookspec
def af2cpu_backends() -> List[str]:
    """Name the backends this plugin provides.

    Called by the CLI once, before parsing, for ``--backend``'s choices.
    Results of all plugins are collected (a list of lists), flattened in
    registration order and de-duplicated.

    :return: backend names, e.g. ``["cpu"]``.
    """


@hookspec
def af2cpu_add_options(parser: Any, backend_names: List[str]) -> None:
    """Add backend-specific options to ``af2cpu batch``.

    Called by the CLI once, on ColabFold's own ``ArgumentParser`` after it
    has all of ``colabfold_batch``'s options and af2cpu's ``--backend``,
    ``--threads`` and ``--precision``, just before parsing. Add a group
    (``parser.add_argument_group("--backend NAME options")``) and give every
    option a default, because the options of all backends are parsed whatever
    backend is selected. Do not reuse an existing option name.

    :param parser: the ``argparse.ArgumentParser``.
    :param backend_names: every backend offered, in ``--backend``'s order.
    :return: nothing (all implementations are called).
    """


@hookspec(firstresult=True)
def af2cpu_defaults(backend: str) -> Optional[Dict[str, Any]]:
    """Defaults for af2cpu's own options that depend on the backend.

    Called by the CLI after parsing. Options the user left unset (``None``;
    ``--precision auto`` counts as unset) take the returned values, e.g.
    ``{"precision": "bf16", "threads": 2}``: this is where a backend says
    what ``auto`` means on this machine. Unanswered, ``precision`` becomes
    ``"fp32"`` and ``threads`` stays ``None`` (the backend's own choice).

    firstresult: the first non-``None`` answer wins.

    :param backend: the selected backend.
    :return: a dict of ``args`` attribute -> default, or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_check_request(backend: str, args: Any, model_type: str, is_complex: bool) -> Optional[str]:
    """Refuse a request the backend cannot serve, before any work is done.

    Called by the CLI after parsing and after the inputs are read (nothing is
    downloaded or predicted yet). ``model_type`` is already resolved the way
    ColabFold resolves it (``colabfold.batch.set_model_type``): ``auto`` is
    ``alphafold2_ptm`` for single chains and ``alphafold2_multimer_v3`` when
    any query is a complex (``A:B``).

    firstresult: the first non-``None`` answer is the refusal.

    :param backend: the selected backend.
    :param args: the parsed ``af2cpu batch`` namespace.
    :param model_type: the resolved model type.
    :param is_complex: whether any query has more than one chain.
    :return: ``None`` to accept, or ONE line naming the option and the fix,
        ``"<what> — <fix>"``, e.g. ``"--templates is not yet on --backend
        cpu — use --backend jax or drop the option"``.
    """


# ---------------------------------------------------------------------------
# ColabFold's run (called through af2cpu_plugin.hooks.colabfold_seam)
# ---------------------------------------------------------------------------


@hookspec
def af2cpu_run_kwargs(backend: str, args: Any) -> Optional[Dict[str, Any]]:
    """Extra keyword arguments for ``colabfold.batch.run``.

    Called by the seam when it is installed. ``run`` takes API-only keywords
    that ``colabfold_batch`` never sets, e.g. ``use_bfloat16`` and ``use_fuse``.
    Results of all plugins are collected and merged; for the same key, the
    plugin registered last wins. An empty merge leaves ``run`` unpatched.

    :param backend: the selected backend.
    :param args: the parsed ``af2cpu batch`` namespace.
    :return: a dict of keyword arguments, or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_pads_lengths(backend: str) -> Optional[bool]:
    """Say whether the backend wants ColabFold's length padding.

    ColabFold pads each monomer query ``--recompile-padding`` residues past
    its length, and a query shorter than one before it up to that one's
    padded length, so that XLA compiles one program for several lengths;
    its ``pad_input`` also pads the MSA and extra-MSA rows to the model
    config's sizes. A backend that compiles nothing only pays for the padded
    rows and residues (masked out, and cropped from every output) and
    answers ``False``: the seam then hands ``predict_structure`` a
    ``pad_len`` of 0, and every query runs at its own length. ``True`` or no
    answer leaves ColabFold's padding as it is.

    firstresult: the first non-``None`` answer wins.

    :param backend: the selected backend.
    :return: ``True``, ``False`` or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_provides_model(backend: str) -> Optional[bool]:
    """Say whether the backend supplies ColabFold's model (runner and params).

    Called by the seam when it is installed. ``True`` makes the seam route
    ``alphafold.model.model.RunModel`` through :func:`af2cpu_make_runner` and
    ``colabfold.alphafold.models.get_model_haiku_params`` through
    :func:`af2cpu_prepare_params`. ``False`` or no answer leaves both
    untouched (ColabFold's JAX model, as for ``--backend jax``).

    firstresult: the first non-``None`` answer wins.

    :param backend: the selected backend.
    :return: ``True``, ``False`` or ``None``.
    """


@hookspec
def af2cpu_record(backend: str, args: Any) -> Optional[Dict[str, Any]]:
    """Extra entries for the results directory's ``config.json``.

    Called by the seam right after ColabFold writes ``config.json`` (before any
    prediction). af2cpu itself records ``backend``, ``precision``, ``threads``
    and ``af2cpu_version``; these entries are added beside them (collected and
    merged, the plugin registered last wins). Values must be JSON-serialisable.

    :param backend: the selected backend.
    :param args: the parsed ``af2cpu batch`` namespace.
    :return: a dict, or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_prepare_params(
    backend: str, data_dir: str, model_type: str, model_number: Any, use_fuse: bool, args: Any
) -> Any:
    """Load the parameters of one model for the backend's runner.

    Called instead of ``colabfold.alphafold.models.get_model_haiku_params``
    (same arguments), when :func:`af2cpu_provides_model` is ``True``: for
    every model ColabFold loads (all five, even with ``--num-models 1``), and
    once more for each model it builds a runner for. ColabFold then indexes
    the result by the keys of ``runner.params`` and assigns the subset to
    ``runner.params`` before predicting with that model, so return a mapping
    ``{haiku scope: {name: array}}`` keyed like the runner's ``params``.

    firstresult: the first non-``None`` answer wins; ``None`` from every
    plugin falls back to ColabFold's ``get_model_haiku_params``.

    :param backend: the selected backend.
    :param data_dir: ColabFold's data dir (``<data_dir>/params/*.npz``).
    :param model_type: resolved model type, e.g. ``alphafold2_ptm``.
    :param model_number: 1..5.
    :param use_fuse: whether ColabFold asked for fused triangle multiplication.
    :param args: the parsed ``af2cpu batch`` namespace.
    :return: the params object, or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_make_runner(
    backend: str, config: Any, params: Any, extended_ptm_config: Any, jit_kwargs: Any, args: Any
) -> Any:
    """Build the model runner ColabFold predicts with.

    Called instead of ``alphafold.model.model.RunModel(config, params,
    extended_ptm_config=..., jit_kwargs=...)``, when
    :func:`af2cpu_provides_model` is ``True``, once per architecture ColabFold
    builds (``colabfold.alphafold.models.load_models_and_params``). The runner
    keeps ``RunModel``'s contract: ``.config``, ``.params`` (reassigned per
    model), ``.multimer_mode``, ``process_features(raw, random_seed)`` and
    ``predict(feat, random_seed, return_representations, callback) ->
    (result, recycles)``.

    firstresult: the first non-``None`` answer wins; ``None`` from every
    plugin falls back to ColabFold's ``RunModel``.

    :param backend: the selected backend.
    :param config: ColabFold's edited ``ml_collections`` model config.
    :param params: what :func:`af2cpu_prepare_params` returned.
    :param extended_ptm_config: ``{"calc_extended_ptm", "use_probs_extended"}``.
    :param jit_kwargs: XLA compile options (meaningless outside JAX).
    :param args: the parsed ``af2cpu batch`` namespace.
    :return: the runner, or ``None``.
    """


@hookspec(firstresult=True)
def af2cpu_multi_instance(backend: str, args: Any) -> Any:
    """Predictions run side by side rather than one after another: return an orchestrator, or ``None``.

    When one is returned, the seam calls ``orchestrator.prestart()`` and runs
    ColabFold's ``run()`` twice (see :mod:`af2cpu_plugin.scheduler`): a plan pass that hands every prediction
    to ``orchestrator.plan(prefix=, model_name=, seed=, runner=, features=,
    params_path=, result_dir=, return_representations=, whole_recycles=)``,
    then ``orchestrator.start()``, then the write pass, whose runners ask
    ``orchestrator.fetch(prefix, model_name, seed, features)`` for each
    result (``None``: compute it in this process), ``orchestrator.finish()``
    once the write pass has returned, and ``orchestrator.close()`` at the end,
    also on errors.

    :param backend: the selected backend.
    :param args: the parsed ``af2cpu batch`` namespace.
    """
