"""The ``af2cpu`` command (also ``python -m af2cpu_plugin``).

Subcommands:

* ``af2cpu batch [colabfold_batch options] [--backend B] [--threads N]
  [--precision P] INPUT OUTDIR`` — ``colabfold_batch`` itself, with the model
  run by the selected backend (see :mod:`af2cpu_plugin.hooks`).
* ``af2cpu convert [--data DIR]`` — convert the params under ``DIR/params``
  ahead of time.
* ``af2cpu info [--length L | INPUT] [--data DIR] ...`` — the CPU, threads,
  precision, memory limit and params cache, and each query's predicted peak
  memory and time per model (:mod:`af2cpu_plugin.capacity`).
* ``af2cpu random-params --data DIR`` — random weights in the format of the
  real ones, for demos and tests only.

Mistakes a user can fix end in ONE line on stderr, ``af2cpu: error: <what> —
<fix>``, and exit status 2 (usage) or 1 (bad files); ``--debug`` adds the
traceback above it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

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
    for action in parser._actions:  # ColabFold's own option, whose help speaks for its JAX model only
        if action.dest == "recompile_padding" and action.help:
            action.help = (action.help.rstrip() + " Only --backend jax pads: --backend cpu compiles nothing, so it "
                           "runs each query at its own length.")
    pm.hook.af2cpu_add_options(parser=parser, backend_names=list(names))


def read_input(args: argparse.Namespace):
    """``(model_type, is_complex)`` of ``args.input`` as ColabFold will read it; any input it cannot fold is a
    one-line :class:`UsageError` here, before the MSA stage."""
    if not Path(args.input).exists():
        raise UsageError(
            f"input {args.input} not found",
            "pass a FASTA or A3M file, a CSV/TSV file, or a directory of them",
        )
    try:
        return colabfold_seam.resolve_model_type(args)
    except colabfold_seam.BadQuery as exc:
        where = "" if str(args.input) in str(exc) else f" in {args.input}"
        raise UsageError(f"{exc}{where}", exc.fix) from exc
    except Exception as exc:
        # Whatever ColabFold's readers raise on a malformed file (its FASTA/A3M parser, pandas for CSV/TSV,
        # Biopython for PDB/mmCIF: ValueError, AssertionError, KeyError, PDBConstructionException, ... found by
        # tests/test_fuzz.py): the input is unreadable, not af2cpu broken.
        raise UsageError(
            f"could not read the input {args.input}: {' '.join(str(exc).split()) or type(exc).__name__}",
            "check its format (FASTA, A3M, CSV/TSV with id,sequence columns)",
        ) from exc


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

    model_type, is_complex = read_input(args)
    _check_results_dir(Path(args.results))
    refusal = pm.hook.af2cpu_check_request(backend=backend, args=args, model_type=model_type, is_complex=is_complex)
    if refusal:
        what, sep, fix = " ".join(str(refusal).split()).partition(" — ")
        raise UsageError(what, fix if sep else "")

    # Last: it may drop templates or copy the usable ones under the results dir.
    checked = template_check.check_templates(args)
    if checked is not None:
        pm.register(_Record({"af2cpu_template_check": checked.record()}))


def _check_results_dir(out: Path) -> None:
    """The results dir, or the dir it will be made in, takes files: checked before ColabFold's logging opens
    a file there (a traceback otherwise). Nothing is created: a refused run leaves no trace."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"the results path {out} is {'a file' if existing == out else f'under the file {existing}'}, "
                         "not a directory", "pass a directory for the results (it is created if missing)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write results to {out} ({exc.strerror or exc})",
                         "pass a directory you can write to") from exc


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

    # A full disk fails ColabFold's log.txt handler on every line after: one clear error, not a logging
    # traceback per line.
    logging.raiseExceptions = False
    with contextlib.ExitStack() as stack:
        stack.enter_context(_terminate_as_interrupt())

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a cluster scheduler's stop) raised like Ctrl-C, so the same clean-up runs: the
    seams are restored, a multi-instance run's workers are stopped, finished queries stay done."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` once; later ones are ignored so that the clean-up can finish (a
    scheduler's SIGKILL after its grace period still ends the process)."""

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


RESUME = "finished queries are kept; rerun the same command to resume (ColabFold skips queries with a .done.txt)"

#: errno values that mean "the disk (or the quota, or ulimit -f) is full".
DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the file-size limit (ulimit -f)"}


def _disk_full_line(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{DISK_FULL[exc.errno]}{where} — free space or use another results dir; {RESUME}"


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
# info
# ---------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _onednn_version() -> str:
    """oneDNN's version from torch's build summary (torch has no API for it; it prints "MKL-DNN v3.x" or
    "oneDNN v3.x" depending on the release)."""
    import re

    import torch

    if not torch.backends.mkldnn.is_available():
        return "not available"
    match = re.search(r"(?:MKL-DNN|oneDNN)\D*?v?(\d+(?:\.\d+)+)", torch.__config__.show())
    return match.group(1) if match else "available (version not in torch's build summary)"


def _converted(npz: Path) -> Optional[Path]:
    """The valid converted cache of ``npz`` without converting or hashing it.

    The converter remembers each npz's sha256 in a sidecar (size and mtime must match); an npz without a
    current sidecar was never converted as it is now, so there is nothing to look for.
    """
    from af2cpu_plugin.converters import find_cached
    from af2cpu_plugin.converters.hashing import _read, _sidecars  # the converter's own sidecar lookup

    st = npz.stat()
    for sidecar in _sidecars(npz):
        digest = _read(sidecar, st.st_size, st.st_mtime_ns)
        if digest:
            return find_cached(npz, digest)
    return None


def _params_lines(data_dir: Path) -> List[str]:
    files = sorted((data_dir / "params").glob("params_*.npz"))
    if not files:
        return [f"params: none under {data_dir / 'params'} (ColabFold downloads them on first use)"]
    lines = [f"params: {len(files)} file(s) under {data_dir / 'params'}"]
    for npz in files:
        cached = _converted(npz)
        state = f"converted ({cached})" if cached else f"not converted yet (`{PROG} convert` or the first run does it)"
        lines.append(f"  {npz.name}: {state}")
    return lines


def _info_queries(args: argparse.Namespace):
    """(queries, is_complex) of --length or INPUT, read the way `af2cpu batch` reads them."""
    from af2cpu_plugin.capacity import preflight

    if args.length is not None:
        if args.length < 1:
            raise UsageError(f"--length {args.length} must be at least 1", "pass the number of residues")
        return [preflight.Query(f"length {args.length}", args.length)], False
    if not Path(args.input).exists():
        raise UsageError(f"input {args.input} not found",
                         "pass a FASTA or A3M file, a CSV/TSV file, a directory of them, or --length L")
    try:
        return preflight.read_queries(args.input)
    except (OSError, ValueError, AssertionError) as exc:
        raise UsageError(
            f"could not read the input {args.input}: {' '.join(str(exc).split()) or type(exc).__name__}",
            "check its format (FASTA, A3M, CSV/TSV with id,sequence columns)",
        ) from exc


def _prediction_lines(args, queries, is_complex, precision: str, threads: int, limit) -> List[str]:
    from af2cpu_plugin.capacity import preflight
    from af2cpu_plugin.capacity.limits import format_size

    # colabfold.batch.set_model_type: auto is multimer v3 for a complex, alphafold2_ptm otherwise.
    model_type = args.model_type
    if model_type == "auto":
        model_type = "alphafold2_multimer_v3" if is_complex else "alphafold2_ptm"
    planned = preflight.plan(args, queries, model_type, is_complex, precision, threads, limit.bytes)
    if not planned:
        return ["queries: none in the input"]
    msa, extra = planned[0].workload.msa_depth, planned[0].workload.extra_msa_depth
    passes, up_to = preflight.recycles(args, model_type)
    up = "up to " if up_to else ""
    lines = [
        f"model type: {model_type}",
        f"MSA rows: {msa} clusters + {extra} extra sequences ("
        + ("--msa-mode single_sequence)" if args.msa_mode == "single_sequence" else
           "the model's budget: the worst case before the MSA exists)"),
        f"templates: {planned[0].workload.templates}",
        f"passes per model: {up}{passes} ({up}{passes - 1} recycles)",
    ]
    if not planned[0].estimate.calibrated:
        from af2cpu_plugin.capacity import cost_model
        from af2cpu_plugin.cpu import cpu_info

        built_in = cost_model.built_in(cpu_info().capability)
        lines.append(f"cost model: built-in coefficients (measured on an {built_in.cpu}, {built_in.threads} "
                     "threads), not calibrated on this machine: `af2cpu calibrate` measures its own")
    for p in planned:
        e, q = p.estimate, p.query
        shape = f"complex of {q.chains} chains" if q.is_complex else "single chain"
        fits = (f"fits in {limit.describe()}" if e.fits and limit.bytes is not None else
                "fits (no memory limit known)" if e.fits else f"does NOT fit in {limit.describe()}")
        if e.fits and e.pair_storage == "bf16":
            fits += ", with the pair stored in bf16"
        lines.append(f"query {q.name!r}: {q.length} residues, {shape}: peak {format_size(e.peak_rss_bytes)}, "
                     f"{_duration(e.seconds_per_pass)} per pass, {up}{_duration(e.seconds_per_pass * passes)} "
                     f"per model; {fits}")
    return lines


def info(argv: Sequence[str], extra_plugins: Iterable[object] = ()) -> int:
    """``af2cpu info``: this machine, the params cache, and the predicted memory and time of an input."""
    from af2cpu_plugin.hooks.cpu_backend import SUPPORTED_MODEL_TYPES

    parser = argparse.ArgumentParser(
        prog=f"{PROG} info",
        description="What --backend cpu would do here: the CPU, torch and oneDNN, threads, precision, the memory "
        "limit, the params cache, and for --length L or an INPUT the predicted peak memory and time per model.",
    )
    parser.add_argument("input", nargs="?", default=None, metavar="INPUT",
                        help="a FASTA/A3M/CSV file or a directory of them, as for af2cpu batch")
    parser.add_argument("--length", type=int, default=None, metavar="L", help="predict for one chain of L residues")
    parser.add_argument("--data", default=None, help="ColabFold's data dir (default: ColabFold's cache dir)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="default: the cores granted")
    parser.add_argument("--memory-limit", default=None, metavar="SIZE", help="e.g. 20G (default: cgroup limit or "
                        "MemAvailable, whichever is smaller)")
    parser.add_argument("--model-type", default="auto", choices=("auto",) + SUPPORTED_MODEL_TYPES)
    parser.add_argument("--msa-mode", default="mmseqs2_uniref_env",
                        choices=("mmseqs2_uniref_env", "mmseqs2_uniref_env_envpair", "mmseqs2_uniref", "single_sequence"),
                        help="as for af2cpu batch; single_sequence means 1 MSA row")
    parser.add_argument("--templates", action="store_true", help="as for af2cpu batch (4 templates)")
    parser.add_argument("--num-recycle", type=int, default=None, help="default: the model type's")
    parser.add_argument("--max-seq", type=int, default=None, help="default: the model type's budget")
    parser.add_argument("--max-extra-seq", type=int, default=None, help="default: the model type's budget")
    args = parser.parse_args(list(argv))
    _setup_environment()  # before colabfold.batch (jax) and torch are imported
    if args.length is not None and args.input is not None:
        raise UsageError("pass either --length or INPUT", "drop one of them")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be at least 1", "pass a positive number of threads")

    from af2cpu_plugin.capacity.limits import memory_limit

    try:
        limit = memory_limit(args.memory_limit)
    except ValueError as exc:
        what, _, fix = str(exc).partition(" — ")
        raise UsageError(f"--memory-limit {what}", fix) from None
    queries = _info_queries(args) if (args.length is not None or args.input is not None) else None

    import torch

    from af2cpu_plugin.cpu import cpu_info, resolve_precision
    from af2cpu_plugin.hooks.cpu_backend import default_threads

    cpu = cpu_info()
    cores = default_threads()
    threads = args.threads or cores
    precision = resolve_precision(args.precision, cpu)
    if args.precision == "auto":
        how = "--precision auto: native bf16" if cpu.native_bf16 else "--precision auto: no native bf16"
    elif precision == "bf16" and not cpu.native_bf16:
        how = "refused by af2cpu batch here: no native bf16"
    else:
        how = "--precision"
    amx = [f for f in ("amx_bf16", "amx_tile") if f in cpu.flags]
    lines = [
        f"cpu: {cpu.model}",
        f"cores granted: {cores} physical ({cpu.cpus} logical CPUs in the affinity mask)",
        f"avx512f: {_yes('avx512f' in cpu.flags)}",
        f"avx512_bf16: {_yes('avx512_bf16' in cpu.flags)}",
        f"amx: {'yes (' + ', '.join(amx) + ')' if amx else 'no'}",
        f"torch: {torch.__version__} (dispatch {cpu.capability})",
        f"oneDNN: {_onednn_version()}",
        f"threads: {threads}" + ("" if args.threads else " (the cores granted)"),
        f"precision: {precision} ({how})",
        f"memory limit: {limit.describe()}",
    ]
    data_dir = Path(args.data or _default_data_dir())
    lines.append(f"data dir: {data_dir}")
    lines += _params_lines(data_dir)
    if queries is None:
        lines.append("prediction: pass --length L or an INPUT for the predicted memory and time")
    else:
        lines += _prediction_lines(args, *queries, precision, threads, limit)
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------
# calibrate
# ---------------------------------------------------------------------------


def calibrate(argv: Sequence[str], extra_plugins: Iterable[object] = ()) -> int:
    """``af2cpu calibrate``: measure this machine's cost-model coefficients (af2cpu info, the memory check)."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} calibrate",
        description="Measure peak memory and speed of the cpu engine on this machine (a few minutes; random "
        "weights, short single-sequence passes, each in a fresh process) and store the cost model's "
        "coefficients, which `af2cpu info` and the memory check of `af2cpu batch` then use.",
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads per run, as you will pass to af2cpu batch (default: the cores granted)")
    args = parser.parse_args(list(argv))
    _setup_environment()
    from af2cpu_plugin.capacity import calibrate as calibration
    from af2cpu_plugin.hooks.cpu_backend import default_threads

    threads = args.threads or default_threads()
    if threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1", "pass a positive number of threads")
    calibration.calibrate(threads, log=lambda line: print(line, flush=True))
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
    parser.add_argument("--haiku-init", action="store_true",
                        help="run haiku's own init of each model (about 90 s a file on 2 cores; what the "
                             "benchmarks use) instead of drawing each array from its recorded init (seconds)")
    args = parser.parse_args(list(argv))
    _setup_environment()

    print(RANDOM_WEIGHTS_BANNER, file=sys.stderr, flush=True)
    from af2cpu_plugin.random_params import write_random_params

    paths = write_random_params(args.data, args.model_type, tuple(args.models), args.seed,
                                method="haiku" if args.haiku_init else "draw")
    for path in paths:
        print(f"  {path}")
    print(f"af2cpu: wrote RANDOM weights to {Path(args.data) / 'params'} — demo/test only", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

COMMANDS: Dict[str, Callable[..., int]] = {
    "batch": batch,
    "calibrate": calibrate,
    "convert": convert,
    "info": info,
    "random-params": random_params,
}

USAGE = f"""\
usage: {PROG} {{batch,calibrate,convert,info,random-params}} ...

Run ColabFold's AlphaFold2 inference on CPUs with a PyTorch engine.

commands:
  batch          colabfold_batch with --backend {{cpu,jax,...}}, --threads, --precision
                 (see '{PROG} batch --help' for every option)
  calibrate      measure this machine's memory and speed for the cost model (a few minutes)
  convert        convert the params under --data ahead of time
  info           this machine (CPU, threads, precision, memory limit), the params cache,
                 and the predicted peak memory and time for --length L or an INPUT
  random-params  write RANDOM weights for demos and tests

options:
  -h, --help     show this help and exit
  --version      show the version and exit
  --debug        (anywhere on the line, or AF2CPU_DEBUG=1) print the traceback above a one-line error
"""


def _error(line: str, code: int) -> int:
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None, extra_plugins: Iterable[object] = ()) -> int:
    """Run the ``af2cpu`` command; returns the exit status (argparse may raise SystemExit).

    ``--debug`` anywhere on the command line (or ``AF2CPU_DEBUG=1``) prints the traceback above the one-line
    error, for a bug report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("AF2CPU_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
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

    def one_line(line: str, code: int) -> int:
        if debug:  # the traceback behind the one line, for a bug report
            traceback.print_exc()
        return _error(line, code)

    try:
        return command(argv[1:], extra_plugins)
    except UsageError as exc:
        return one_line(exc.line(), exc.exit_code)
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        stopped = isinstance(exc, Terminated)
        resume = f"; {RESUME}" if argv[0] == "batch" else ""
        print(f"{PROG}: {'stopped by SIGTERM' if stopped else 'interrupted'}{resume}", file=sys.stderr)
        return 128 + (signal.SIGTERM if stopped else signal.SIGINT)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            return one_line(_disk_full_line(exc), 1)
        raise
    except Exception as exc:
        known = colabfold_seam.known_error_types()
        if known and isinstance(exc, known):
            tidy = colabfold_seam.as_usage_error(exc)
            return one_line(tidy.line(), tidy.exit_code)
        raise


if __name__ == "__main__":
    sys.exit(main())
