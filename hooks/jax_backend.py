"""``--backend jax``: ColabFold's own JAX model, untouched.

It patches nothing: ColabFold's ``RunModel`` and ``get_model_haiku_params``
run as they do under ``colabfold_batch``. The only differences are those the
user asks for with af2cpu's options: ``--precision fp32`` turns off
ColabFold's bf16 trunk (``use_bfloat16=False``); with the default
(``auto``, which here means ColabFold's bf16) even ``run`` stays unpatched. ``--threads`` does not
apply (XLA picks its own thread pool).
"""

from __future__ import annotations

import sys

from af2cpu_plugin.hooks.hookspecs import hookimpl

NAME = "jax"


@hookimpl
def af2cpu_backends():
    return [NAME]


@hookimpl
def af2cpu_defaults(backend):
    if backend == NAME:
        return {"precision": "bf16"}  # ColabFold's default (use_bfloat16=True)
    return None


@hookimpl
def af2cpu_check_request(backend, args):
    if backend != NAME:
        return None
    if getattr(args, "use_fast_kernels", False) and args.precision != "bf16":
        return "--use-fast-kernels needs half precision — drop --precision fp32 or drop --use-fast-kernels"
    if getattr(args, "threads", None) is not None:
        print("af2cpu: note: --threads does not apply to --backend jax (XLA picks its own threads)", file=sys.stderr)
    if str(getattr(args, "instances", "1") or "1").strip() != "1" or getattr(args, "scheduler", None):
        return ("--instances and --scheduler run the cpu engine's predictions side by side, not JAX's — "
                "use --backend cpu, or drop them")
    return None


@hookimpl
def af2cpu_run_kwargs(backend, args):
    if backend == NAME and args.precision == "fp32":
        return {"use_bfloat16": False}
    return None


@hookimpl
def af2cpu_provides_model(backend):
    return False if backend == NAME else None
