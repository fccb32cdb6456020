#!/usr/bin/env bash
# Claim (d) on trained deep nets: MLPs of depth 8, 12, 16 at width 24 (4,834-9,634 parameters: the exact Hessian is
# the reference) and width 48 (16,570-35,386: above exact_max_params; SLQ is the reference), each run once per
# method; checkpoints.csv for verdict.py, then cost.py (seconds and peak memory of each method, fresh processes).
# Usage: [SCALE=full] bash experiments/2026-12-06-deep-trained/run.sh [OUT] [SEED]
#   default: depths 8 and 16, seed 0 (about 30 min); SCALE=full: depths 8, 12, 16; one part a seed: run it for
#   SEED=0 ... 4 and copy OUT/checkpoints.csv beside verdict.py as checkpoints-seed<SEED>.csv (cost.csv: seed 0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-outputs/deep-trained}
seed=${2:-0}
case "${SCALE:-default}" in
  default | full) ;;
  *) echo "run.sh: SCALE=${SCALE} is unknown; use SCALE=full or leave it unset (default)" >&2; exit 2 ;;
esac
if [[ "${SCALE:-default}" == full ]]; then depths=8,12,16; else depths=8,16; fi
sweep() { sane-run experiment=deep_trained seed="$seed" depth="$depths" hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"; }
sweep width=24 hessian=exact,block_diag,block_band,slq hydra.sweep.dir="$out/w24"
sweep width=48 hessian=slq,block_diag hydra.sweep.dir="$out/w48"
python "$here/checkpoints.py" "$out/checkpoints.csv" "$out"/w24/*/ "$out"/w48/*/
if [[ "$seed" == 0 ]]; then python "$here/cost.py" "$out/cost.csv" "$out"/w24/*/ "$out"/w48/*/; fi
python "$here/verdict.py" "$out"
