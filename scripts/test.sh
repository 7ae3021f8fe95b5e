#!/usr/bin/env bash
# Set up the venv, then run the whole test suite; pytest's summary is the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export JAX_PLATFORMS=cpu
exec python -m pytest -q "$@"
