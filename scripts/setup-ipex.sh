#!/usr/bin/env bash
# Opt-in: a SEPARATE venv, .venv-ipex, with intel-extension-for-pytorch 2.8.0 for `--kernels ipex`.
#
# IPEX is archived upstream; its last CPU release (2.8.0) needs torch 2.8, so it cannot live in
# the default .venv (torch 2.13). Stock PyTorch stays the default engine; this venv exists to
# compare (bench/speed.py picks it up as the `ipex` engine) and for sites that want IPEX anyway.
#
#   TORCH_SPEC  torch requirement for IPEX (default: torch==2.8.0)
#   PIP_EXTRA   extra pip arguments for the torch install, e.g.
#               PIP_EXTRA="--index-url https://download.pytorch.org/whl/cpu" for the CPU-only build
#               (without it PyPI serves the CUDA build, with several GB of CUDA libraries).
#   PYTHON      interpreter for the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${TORCH_SPEC:-torch==2.8.0}"
PIP_EXTRA="${PIP_EXTRA:-}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv-ipex/bin/python ]; then
    echo "setup-ipex: creating .venv-ipex with $PYTHON"
    "$PYTHON" -m venv .venv-ipex
fi
# shellcheck disable=SC1091
. .venv-ipex/bin/activate
# shellcheck disable=SC2086
python -m pip install -q $PIP_EXTRA "$TORCH_SPEC"
python -m pip install -q -e ".[test,ipex]"
echo "setup-ipex: $(python -c 'import torch, intel_extension_for_pytorch as ipex, af2cpu_plugin as a; print(f"af2cpu {a.__version__}, torch {torch.__version__}, ipex {ipex.__version__}")')"
