"""``--backend cpu``: ColabFold's pipeline with af2cpu's PyTorch engine as the model.

Serves monomer AlphaFold2 models (``alphafold2_ptm``, ``alphafold2``), also on
complexes folded with ``--model-type alphafold2_ptm``, and AlphaFold-Multimer
(``alphafold2_multimer_v1``, ``_v2``, ``_v3``; what ``--model-type auto`` picks for
a complex), in fp32 or bf16
(``--precision auto``: bf16 where the CPU has native bf16 dot products), with or without
templates (``--templates``, ``--custom-template-path``, ``--pdb-hit-file``). Everything it
does not serve yet is refused up front, in one line, by
:func:`af2cpu_check_request`.

Before any MSA or compute, each query's predicted peak memory
(:mod:`af2cpu_plugin.capacity`) is checked against the memory limit
(``--memory-limit``, else the cgroup limit or MemAvailable); the first query
that does not fit is refused in one line with settings that would fit, unless
``--force``. The limit is recorded in ``config.json`` and handed to the runner.

Params come from ColabFold's own files, ``<data>/params/params_model_N*.npz``,
converted once to the engine's (fused) layout and cached as safetensors by
:mod:`af2cpu_plugin.converters`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import List, Optional

from af2cpu_plugin.hooks import colabfold_seam
from af2cpu_plugin.hooks.errors import UsageError
from af2cpu_plugin.hooks.hookspecs import hookimpl

NAME = "cpu"
SUPPORTED_MODEL_TYPES = ("alphafold2_ptm", "alphafold2", "alphafold2_multimer_v1", "alphafold2_multimer_v2",
                         "alphafold2_multimer_v3")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _cgroup_cpu_limit() -> Optional[int]:
    """CPUs granted by a cgroup v2 quota (``docker --cpus``), rounded up; None if unlimited."""
    try:
        quota, period = _read("/sys/fs/cgroup/cpu.max").split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return None


def allowed_cpus() -> List[int]:
    """This process's affinity mask (taskset, Slurm, cpusets), or every CPU where there is none."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def one_cpu_per_core() -> List[int]:
    """The first logical CPU of each physical core in this process's affinity mask (sysfs topology:
    package id + core id); OSError where sysfs has no topology."""
    seen, cpus = set(), []
    for cpu in allowed_cpus():
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        core = (_read(f"{topo}/physical_package_id"), _read(f"{topo}/core_id"))
        if core not in seen:
            seen.add(core)
            cpus.append(cpu)
    return cpus


def default_threads() -> int:
    """Physical cores this process may use: the default for ``--threads``.

    The engine is dominated by GEMMs/einsums that keep a core's FP units busy,
    so a second hyper-thread on the same core adds contention, not speed, and
    more threads than granted CPUs only oversubscribes. So: the CPUs in this
    process's affinity mask (``os.sched_getaffinity``: taskset, Slurm, cpusets)
    counted once per physical core (:func:`one_cpu_per_core`), capped by a
    cgroup CPU quota. Without sysfs topology, the allowed CPU count is scaled
    by physical/logical cores from psutil.
    """
    try:
        n = len(one_cpu_per_core())
    except OSError:
        allowed = allowed_cpus()
        try:
            import psutil

            physical = psutil.cpu_count(logical=False) or 0
            logical = psutil.cpu_count(logical=True) or 0
        except ImportError:
            physical = logical = 0
        n = round(len(allowed) * physical / logical) if physical and logical else len(allowed)
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


@functools.lru_cache(maxsize=None)  # asked by af2cpu_record and af2cpu_make_runner: resolved (and logged) once
def resolve_kernels(requested: str) -> str:
    """``auto`` -> ``ipex`` when intel-extension-for-pytorch is importable and matches torch (its own venv),
    else ``native`` when the engine's own kernels build and run on this CPU, else ``stock``."""
    if requested != "auto":
        return requested
    from af2cpu_plugin import ipex, kernels

    if ipex.status()[0]:
        return "ipex"
    usable, why = kernels.status()
    if not usable:
        logger.info("kernels: PyTorch's (%s)", why)
    return "native" if usable else "stock"


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


@hookimpl
def af2cpu_backends():
    return [NAME]


@hookimpl
def af2cpu_add_options(parser, backend_names):
    if NAME not in backend_names:
        return
    group = parser.add_argument_group("--backend cpu options", "")
    group.add_argument(
        "--kernels",
        choices=("auto", "native", "stock", "ipex"),
        default="auto",
        help="Kernels of the cpu engine: 'native' (its own attention, LayerNorm and fused elementwise kernels, AVX-512 or AVX2, "
        "built once per machine, with PyTorch's oneDNN GEMMs), 'stock' (PyTorch's kernels only), or 'ipex' (intel-extension-for-pytorch, "
        "opt-in: its own venv, scripts/setup-ipex.sh). 'auto' (default): ipex when it is importable and matches "
        "torch, else native where this CPU and a compiler allow it, else stock. config.json records the "
        "choice.%(default).0s",
    )
    group.add_argument(
        "--subbatch-size",
        type=int,
        default=None,
        metavar="N",
        help="Rows of a batched attention/transition the cpu engine processes at once; "
        "smaller saves memory on long sequences at some speed cost. Default: all at once.%(default).0s",
    )
    group.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="Memory the run may use, e.g. 20G or 512M (binary units). Default: the smallest of this "
        "process's cgroup limit and the memory available now (MemAvailable). Each query's predicted peak is "
        "checked against it before any MSA or compute; config.json records it.%(default).0s",
    )
    group.add_argument(
        "--instances",
        default="1",
        metavar="N|auto",
        help="Predictions run side by side: N worker processes, each pinned to its share of the usable cores "
        "(a Dask LocalCluster). The unit of work is one (query, model, seed) prediction, longest first; the "
        "output directory is the one a single-instance run writes. 'auto': one per core, as many as fit in "
        "memory at the largest prediction's predicted peak. Default: 1 (this process, all cores).%(default).0s",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Send the predictions to an existing Dask scheduler (e.g. tcp://head:8786, or one started by "
        "dask-jobqueue on SLURM/PBS) instead of local instances. Its workers need this plugin and read the "
        "params from --data at the same path.%(default).0s",
    )
    group.add_argument(
        "--force",
        action="store_true",
        default=False,
        help="Run even where a query's predicted peak memory exceeds the memory limit.%(default).0s",
    )


@hookimpl
def af2cpu_defaults(backend):
    if backend == NAME:
        from af2cpu_plugin.cpu import resolve_precision

        return {"precision": resolve_precision("auto"), "threads": default_threads()}
    return None


def _refuse(option: str, fix: str = "use --backend jax or drop the option") -> str:
    return f"{option} is not yet on --backend cpu — {fix}"


@hookimpl
def af2cpu_check_request(backend, args, model_type, is_complex):
    if backend != NAME:
        return None
    # Templates (--templates, --custom-template-path, --pdb-hit-file) are
    # served: ColabFold builds the template features, the engine embeds them;
    # the CLI's pre-flight (hooks/template_check.py) checks the template dir.
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"--model-type {model_type} is not supported on --backend cpu — "
            f"use --model-type {' or '.join(SUPPORTED_MODEL_TYPES)}, or --backend jax"
        )
    if getattr(args, "use_gpu_relax", False):
        return "--use-gpu-relax is not available on --backend cpu — drop it (--amber relaxes on the CPU)"
    if (getattr(args, "num_ensemble", 1) or 1) > 1:
        return _refuse(f"--num-ensemble {args.num_ensemble}", "use --num-ensemble 1 or --backend jax")
    if getattr(args, "use_dropout", False):
        return _refuse("--use-dropout")
    if getattr(args, "use_fast_kernels", False):
        return "--use-fast-kernels is GPU-only — drop it on --backend cpu"
    if args.precision == "bf16":
        from af2cpu_plugin.cpu import cpu_info

        info = cpu_info()
        if not info.native_bf16:
            return (f"--precision bf16 needs native bf16 dot products (avx512_bf16 or AMX), which this CPU "
                    f"({info.model}, {info.capability}) lacks: emulated bf16 GEMMs run about 100x slower "
                    "than fp32 — use --precision auto or fp32")
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads} must be at least 1 — pass a positive number of threads"
    try:
        instances = instances_of(args)
    except UsageError as exc:
        return exc.line()
    if instances != 1 or getattr(args, "scheduler", None):
        try:
            import distributed  # noqa: F401
        except ImportError:
            return "--instances and --scheduler need dask[distributed] — pip install 'dask[distributed]'"
    if getattr(args, "kernels", "auto") == "ipex":
        from af2cpu_plugin import ipex

        usable, why = ipex.status()
        if not usable:
            return f"--kernels ipex: {why} — make its venv with scripts/setup-ipex.sh, or use --kernels stock"
    if getattr(args, "kernels", "auto") == "native":
        from af2cpu_plugin import kernels

        usable, why = kernels.status()
        if not usable:
            return f"--kernels native: {why} — use --kernels auto or stock"
    subbatch = getattr(args, "subbatch_size", None)
    if subbatch is not None and subbatch < 1:
        return f"--subbatch-size {subbatch} must be at least 1 — pass a positive number of rows or drop it"
    try:
        limit = memory_limit_of(args)
    except ValueError as exc:
        return f"--memory-limit {exc}"
    if getattr(args, "force", False):
        return None
    return _memory_refusal(args, model_type, is_complex, limit)


def memory_limit_of(args):
    """The memory limit of this run (``--memory-limit``, else cgroup/MemAvailable), read once and kept on
    ``args`` so that the check, config.json and the runner see the same number."""
    limit = getattr(args, "af2cpu_memory_limit", None)
    if limit is None:
        from af2cpu_plugin.capacity.limits import memory_limit as read_limit

        limit = read_limit(getattr(args, "memory_limit", None))
        args.af2cpu_memory_limit = limit
    return limit


def _memory_refusal(args, model_type, is_complex, limit) -> Optional[str]:
    """Refuse, before any MSA or compute, the first query predicted not to fit in ``limit``."""
    if limit.bytes is None or getattr(args, "input", None) is None:  # nothing to check against, or no input
        return None
    from af2cpu_plugin.capacity import preflight
    from af2cpu_plugin.cpu import cpu_info

    queries, _ = preflight.read_queries(args.input, getattr(args, "sort_queries_by", "length"))
    threads = args.threads or default_threads()
    planned = preflight.plan(args, queries, model_type, is_complex, args.precision, threads, limit.bytes)
    return preflight.refusal(args, planned, limit, args.precision, threads, cpu_info().native_bf16)


@hookimpl
def af2cpu_run_kwargs(backend, args):
    if backend != NAME:
        return None
    # ColabFold's config then says what the engine computes: the trunk's
    # precision, fused triangle multiplication (the converter's layout).
    return {"use_bfloat16": args.precision == "bf16", "use_fuse": True}


#: From this many usable cores a single instance is told about --instances (on 2 cores instances gained
#: 1.0-1.15x; on a 16-core Xeon 1.6-2.5x the predictions per hour of one 16-thread instance: README).
HINT_CORES = 8


def instances_hint(num_cores: Optional[int] = None) -> Optional[str]:
    """One line for a single-instance run on a many-core machine: a prediction's threads scale poorly past a
    few cores, so side-by-side instances deliver more predictions per hour. None below HINT_CORES."""
    if num_cores is None:
        from af2cpu_plugin.scheduler.cores import usable_cpus

        num_cores = len(usable_cpus())
    if num_cores < HINT_CORES:
        return None
    return (f"{num_cores} cores, one instance: with several predictions (queries, models, seeds), "
            f"--instances auto runs them side by side on pinned workers (on a 16-core node 2.2-2.5x the "
            f"predictions per hour of one instance)")


@functools.lru_cache(maxsize=None)
def _log_instances_hint_once() -> None:
    # Logged from the runner factory: ColabFold sets up its log (console and log.txt) after parsing the
    # arguments, so a line logged while they are checked would be lost.
    hint = instances_hint()
    if hint:
        logger.info(hint)


def instances_of(args) -> object:
    """``--instances`` as an int >= 1 or "auto"; a UsageError otherwise."""
    text = str(getattr(args, "instances", "1") or "1").strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--instances {text!r} is not a number of instances", "use a whole number >= 1, or auto")
    return n


@hookimpl
def af2cpu_multi_instance(backend, args):
    if backend != NAME:
        return None
    instances = instances_of(args)
    scheduler = getattr(args, "scheduler", None)
    if instances == 1 and not scheduler:
        return None
    from af2cpu_plugin.scheduler.orchestrator import MultiInstance

    return MultiInstance(instances, scheduler, memory_limit_of(args).bytes)


@hookimpl
def af2cpu_provides_model(backend):
    return True if backend == NAME else None


@hookimpl
def af2cpu_pads_lengths(backend):
    # An eager engine compiles nothing: ColabFold's padding (ten residues, and the MSA rows to the config's depth)
    # would only add work.
    return False if backend == NAME else None


@hookimpl
def af2cpu_record(backend, args):
    if backend != NAME:
        return None
    import torch

    from af2cpu_plugin.cpu import cpu_info

    info = cpu_info()
    limit = memory_limit_of(args)
    return {"torch_version": torch.__version__, "subbatch_size": getattr(args, "subbatch_size", None),
            "kernels": resolve_kernels(getattr(args, "kernels", "auto")),
            "cpu": info.model, "cpu_capability": info.capability, "cpu_native_bf16": info.native_bf16,
            "memory_limit": limit.bytes, "memory_limit_source": limit.source,
            "memory_check_forced": bool(getattr(args, "force", False))}


@hookimpl
def af2cpu_prepare_params(backend, data_dir, model_type, model_number, use_fuse, args):
    if backend != NAME:
        return None
    path = colabfold_seam.params_path(data_dir, model_type, model_number)
    if not path.is_file():
        raise UsageError(
            f"params file {path} not found",
            "point --data at ColabFold's weights (colabfold_batch downloads them there), "
            "or make demo weights with `af2cpu random-params --data DIR`",
        )
    from af2cpu_plugin import converters
    from af2cpu_plugin.random_params import expected_shapes

    # Checked against the model's arrays here, where the file is known: a file for another model type is
    # refused naming it (and never cached), not later when the runner binds the arrays.
    expected = expected_shapes(model_type, model_number)
    return converters.nested(converters.load_params(path, logger.info, expected=expected))


@hookimpl
def af2cpu_make_runner(backend, config, params, extended_ptm_config, jit_kwargs, args):
    if backend != NAME:
        return None
    import torch

    from af2cpu_plugin.engine.policy import RuntimePolicy
    from af2cpu_plugin.runner import CpuRunModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if instances_of(args) == 1 and not getattr(args, "scheduler", None):
        _log_instances_hint_once()
    policy = RuntimePolicy(
        precision=args.precision,
        subbatch_size=getattr(args, "subbatch_size", None),
        threads=args.threads,
        kernels=resolve_kernels(getattr(args, "kernels", "auto")),
        # The runner picks each input's chunking to fit it (capacity.cost_model).
        memory_limit=memory_limit_of(args).bytes,
    )
    return CpuRunModel(
        config, params, extended_ptm_config=extended_ptm_config, jit_kwargs=jit_kwargs, policy=policy
    )
