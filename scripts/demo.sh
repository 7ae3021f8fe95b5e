#!/usr/bin/env bash
# Demo of the whole pipeline on CPU with RANDOM weights (no download needed):
# writes random params to $DATA, then folds examples/P54025.fasta with --backend cpu.
#
#   DATA  scratch data dir for the random weights (default: .cache/random-params)
#   OUT   results dir (default: out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export JAX_PLATFORMS=cpu

DATA="${DATA:-.cache/random-params}"
OUT="${OUT:-out/demo}"

banner() {
    cat >&2 <<'TXT'
########################################################################
#  DEMO WITH RANDOM WEIGHTS                                            #
#  The params below are random, not AlphaFold2's: the predicted        #
#  structure, pLDDT and PAE are MEANINGLESS. This only shows that the  #
#  pipeline runs end to end. Use real weights (--data) for science.    #
########################################################################
TXT
}

banner
af2cpu random-params --data "$DATA"
af2cpu batch --backend cpu --msa-mode single_sequence --data "$DATA" \
    --num-models 1 --num-recycle 1 examples/P54025.fasta "$OUT"
banner
echo "demo: results (from RANDOM weights) in $OUT" >&2
