#!/usr/bin/env bash
# Create .venv (if missing) and install af2cpu-plugin into it, editable, with test extras.
#
#   TORCH_SPEC  torch requirement installed first (default: torch==2.13.0).
#               On a machine whose pip does not already serve CPU wheels, use
#               PIP_EXTRA="--index-url https://download.pytorch.org/whl/cpu"
#               for the CPU-only build (no CUDA download).
#   PIP_EXTRA   extra pip arguments for the torch install (index URL, --find-links ...).
#   PYTHON      interpreter used to create the venv (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PIP_EXTRA="${PIP_EXTRA:-}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# torch first, so that the CPU wheel (not a CUDA one) satisfies install_requires.
# shellcheck disable=SC2086
python -m pip install -q $PIP_EXTRA "$TORCH_SPEC"
python -m pip install -q -e ".[test]"
echo "setup: $(python -c 'import torch, colabfold, af2cpu_plugin as a; print(f"af2cpu {a.__version__}, torch {torch.__version__}")')"
# Build the engine's own kernels now (once per machine, ~15 s) rather than inside the first run; without a C++
# compiler this prints why and the engine uses PyTorch's kernels.
echo "setup: $(python -c 'from af2cpu_plugin import kernels; print(kernels.status()[1])')"
