"""The ``af2cpu`` command (also ``python -m af2cpu_plugin``).

Subcommands:

* ``af2cpu batch [colabfold_batch options] [--backend B] [--threads N]
  [--precision P] INPUT OUTDIR`` — ``colabfold_batch`` itself, with the model
  run by the selected backend (see :mod:`af2cpu_plugin.hooks`).
* ``af2cpu convert [--data DIR]`` — convert the params under ``DIR/params``
  ahead of time.
* ``af2cpu random-params --data DIR`` — random weights in the format of the
  real ones, for demos and tests only.

Mistakes a user can fix end in ONE line on stderr, ``af2cpu: error: <what> —
<fix>``, and exit status 2 (usage) or 1 (bad files); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from af2cpu_plugin.hooks import colabfold_seam, template_check
from af2cpu_plugin.cpu import PRECISION_CHOICES as PRECISIONS
from af2cpu_plugin.hooks.errors import UsageError
from af2cpu_plugin.hooks.hookspecs import hookimpl

PROG = "af2cpu"
DEFAULT_BACKEND = "cpu"

RANDOM_WEIGHTS_BANNER = """\
########################################################################
#  WARNING: RANDOM WEIGHTS. These are NOT AlphaFold2's parameters.     #
#  Structures predicted with them are meaningless; use them only for   #
#  demos and tests. Never mix them into a real ColabFold data dir.     #
########################################################################"""


def _setup_environment() -> None:
    # Before anything imports jax (colabfold.batch does at import time): this
    # plugin is for CPU hosts, and jax must not probe for accelerators.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Before torch is imported (it reads this once): torch's CPU allocator asks
    # for transparent huge pages on blocks over 2 MiB, so the pair-sized
    # activations glibc maps afresh on every call (over its 32 MiB mmap
    # threshold, see malloc.py) fault in 512x fewer pages. A user's own
    # THP_MEM_ALLOC_ENABLE=0 wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


# ---------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------


def _add_af2cpu_options(parser: argparse.ArgumentParser, pm, names: List[str]) -> None:
    parser.prog = f"{PROG} batch"
    parser.description = (
        "colabfold_batch with the AlphaFold2 model run by a chosen --backend. "
        "Every colabfold_batch option works; af2cpu's own options are listed under 'af2cpu options'."
    )
    # ColabFold's parser appends "(default: ...)" to every help; "%(default).0s"
    # (formats to nothing) tells it not to, where the help explains the default.
    group = parser.add_argument_group("af2cpu options", "")
    default = DEFAULT_BACKEND if DEFAULT_BACKEND in names else names[0]
    group.add_argument(
        "--backend",
        choices=names,
        default=default,
        help="Which engine runs the model: 'cpu' is af2cpu's PyTorch engine, "
        "'jax' is ColabFold's own JAX model, unchanged.",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="Intra-op threads for the model (cpu backend). "
        "Default: the physical cores this process may use (affinity mask, cgroup quota).%(default).0s",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="Numerics of the model trunk. 'auto' (default): on --backend cpu, bf16 where the CPU has native "
        "bf16 dot products (avx512_bf16 or AMX), else fp32; on --backend jax, ColabFold's bf16. "
        "config.json records the precision used.%(default).0s",
    )
    pm.hook.af2cpu_add_options(parser=parser, backend_names=list(names))


def _prepare_request(pm, args: argparse.Namespace) -> None:
    """Fill backend defaults, read the input, ask the backend whether it can serve it."""
    backend = args.backend
    if args.precision == "auto":
        args.precision = None  # the backend's default is what "auto" means for it
    for key, value in (pm.hook.af2cpu_defaults(backend=backend) or {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.precision is None:
        args.precision = "fp32"

    if not Path(args.input).exists():
        raise UsageError(
            f"input {args.input} not found",
            "pass a FASTA or A3M file, a CSV/TSV file, or a directory of them",
        )
    try:
        model_type, is_complex = colabfold_seam.resolve_model_type(args)
    except colabfold_seam.EmptyChain as exc:
        raise UsageError(f"{exc} in {args.input}",
                         "separate the chains of a complex by single ':' (A:B), with a sequence for each") from exc
    except (OSError, ValueError, AssertionError) as exc:
        raise UsageError(
            f"could not read the input {args.input}: {' '.join(str(exc).split()) or type(exc).__name__}",
            "check its format (FASTA, A3M, CSV/TSV with id,sequence columns)",
        ) from exc

    refusal = pm.hook.af2cpu_check_request(backend=backend, args=args, model_type=model_type, is_complex=is_complex)
    if refusal:
        what, sep, fix = " ".join(str(refusal).split()).partition(" — ")
        raise UsageError(what, fix if sep else "")

    # Last: it may drop templates or copy the usable ones under the results dir.
    checked = template_check.check_templates(args)
    if checked is not None:
        pm.register(_Record({"af2cpu_template_check": checked.record()}))


class _Record:
    """A plugin adding fixed entries to ``config.json`` (what the pre-flight decided)."""

    def __init__(self, entries: Dict[str, object]) -> None:
        self.entries = entries

    @hookimpl
    def af2cpu_record(self, backend, args):
        return self.entries


def batch(argv: Sequence[str], extra_plugins: Iterable[object] = ()) -> int:
    """``af2cpu batch``: run ``colabfold.batch.main()`` with the selected backend."""
    _setup_environment()
    from af2cpu_plugin.hooks.manager import backend_names, get_plugin_manager

    pm = get_plugin_manager(extra_plugins)
    names = backend_names(pm)
    if not names:
        raise UsageError("no backend is registered", "reinstall af2cpu-plugin (pip install -e .)")

    with contextlib.ExitStack() as stack:

        def on_parsed(args: argparse.Namespace) -> None:
            _prepare_request(pm, args)
            stack.enter_context(colabfold_seam.installed(pm, args.backend, args))

        colabfold_seam.colabfold_main(
            list(argv),
            prog=f"{PROG} batch",
            extend_parser=lambda parser: _add_af2cpu_options(parser, pm, names),
            on_parsed=on_parsed,
        )
    return 0


# ---------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------


def _default_data_dir() -> str:
    from colabfold.download import default_data_dir

    return str(default_data_dir)


def convert(argv: Sequence[str], extra_plugins: Iterable[object] = ()) -> int:
    """``af2cpu convert``: convert every params file under ``DATA/params`` ahead of time."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} convert",
        description="Convert ColabFold's params (DATA/params/*.npz) to the cpu engine's cached "
        "format now, instead of at the first run. Files already converted are reused.",
    )
    parser.add_argument("--data", default=None, help="ColabFold's data dir, as for colabfold_batch --data "
                        "(default: ColabFold's cache dir).")
    args = parser.parse_args(list(argv))
    data_dir = Path(args.data or _default_data_dir())
    if not (data_dir / "params").is_dir():
        raise UsageError(
            f"no params directory under {data_dir}",
            "pass --data DIR where DIR/params holds ColabFold's params_model_*.npz",
        )
    from af2cpu_plugin import converters

    ready = converters.convert_data_dir(data_dir, lambda msg: print(f"  {msg}", flush=True))
    if not ready:
        raise UsageError(
            f"no params_model_*.npz under {data_dir / 'params'}",
            "download the weights with colabfold_batch (or colabfold_download) first",
        )
    print(f"{len(ready)} params file(s) ready for --backend cpu:")
    for path in ready:
        print(f"  {path}")
    return 0


# ---------------------------------------------------------------------------
# random-params
# ---------------------------------------------------------------------------


def _model_numbers(text: str) -> List[int]:
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n not in (1, 2, 3, 4, 5) for n in numbers):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of model numbers 1..5")
    return numbers


def random_params(argv: Sequence[str], extra_plugins: Iterable[object] = ()) -> int:
    """``af2cpu random-params``: write random weights in the real files' format (demo/test only)."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} random-params",
        description="Write RANDOM AlphaFold2 weights in the format of the real ones, plus ColabFold's "
        "download marker, under DATA/params. For demos and tests only: predictions are meaningless.",
    )
    parser.add_argument("--data", required=True, help="A scratch data dir (never ColabFold's real one).")
    from af2cpu_plugin.random_params import MODEL_TYPES

    parser.add_argument("--model-type", default="alphafold2_ptm", choices=list(MODEL_TYPES),
                        help="alphafold2_multimer_v3 is what --model-type auto picks for a complex (A:B)")
    parser.add_argument("--models", type=_model_numbers, default=[1, 2, 3, 4, 5], metavar="1,2,3,4,5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    _setup_environment()

    print(RANDOM_WEIGHTS_BANNER, file=sys.stderr, flush=True)
    from af2cpu_plugin.random_params import write_random_params

    paths = write_random_params(args.data, args.model_type, tuple(args.models), args.seed)
    for path in paths:
        print(f"  {path}")
    print(f"af2cpu: wrote RANDOM weights to {Path(args.data) / 'params'} — demo/test only", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

COMMANDS: Dict[str, Callable[..., int]] = {
    "batch": batch,
    "convert": convert,
    "random-params": random_params,
}

USAGE = f"""\
usage: {PROG} {{batch,convert,random-params}} ...

Run ColabFold's AlphaFold2 inference on CPUs with a PyTorch engine.

commands:
  batch          colabfold_batch with --backend {{cpu,jax,...}}, --threads, --precision
                 (see '{PROG} batch --help' for every option)
  convert        convert the params under --data ahead of time
  random-params  write RANDOM weights for demos and tests

options:
  -h, --help     show this help and exit
  --version      show the version and exit
"""


def _error(line: str, code: int) -> int:
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None, extra_plugins: Iterable[object] = ()) -> int:
    """Run the ``af2cpu`` command; returns the exit status (argparse may raise SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        from af2cpu_plugin import __version__

        print(f"{PROG} {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        return _error(f"unknown command {argv[0]!r} — use one of: {', '.join(COMMANDS)}", 2)
    try:
        return command(argv[1:], extra_plugins)
    except UsageError as exc:
        return _error(exc.line(), exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = colabfold_seam.known_error_types()
        if known and isinstance(exc, known):
            tidy = colabfold_seam.as_usage_error(exc)
            return _error(tidy.line(), tidy.exit_code)
        raise


if __name__ == "__main__":
    sys.exit(main())
