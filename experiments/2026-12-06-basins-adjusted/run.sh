#!/usr/bin/env bash
# Claim (c) against a regression-adjusted null: the default MLP, full-batch GD, the exact Hessian every 10 steps and
# around every loss spike; pairs.py tables every checkpoint pair, verdict.py applies the rule.
# Usage: [SCALE=full] bash experiments/2026-12-06-basins-adjusted/run.sh [OUT] [SEED]
#   default: lr 0.5 and 1 x seeds 0, 1, 2,400 steps (about 20 min)
#   SCALE=full: lr 0.5, 0.7, 1, 1.4 x the one SEED, 6,000 steps; one part a seed: run it for SEED=0 ... 9 and copy
#   each OUT/pairs.csv.gz beside verdict.py as pairs-seed<SEED>.csv.gz
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-outputs/basins-adjusted}
seed=${2:-0}
case "${SCALE:-default}" in
  default | full) ;;
  *) echo "run.sh: SCALE=${SCALE} is unknown; use SCALE=full or leave it unset (default)" >&2; exit 2 ;;
esac
if [[ "${SCALE:-default}" == full ]]; then lrs=0.5,0.7,1.0,1.4 seeds=$seed steps=6000; else lrs=0.5,1.0 seeds=0,1 steps=2400; fi
sane-run experiment=basins_adjusted lr="$lrs" seed="$seeds" steps="$steps" hydra/launcher=joblib \
    hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/runs"
python "$here/pairs.py" "$out/pairs.csv.gz" "$out"/runs/*/
python "$here/verdict.py" "$out"
