#!/usr/bin/env bash
# Claim (a), generalisation moved by known levers: MLPs (width 25, 50, 100) and CNNs (6, 12, 24 channels) on
# MNIST-1D, mini-batch Adam for a fixed 8,000 steps, training-set size and label noise as levers; the exact Hessian
# at the end; one runs table for verdict.py.
# Usage: [SCALE=full] bash experiments/2026-12-06-generalisation-levers/run.sh [OUT] [SEED]
#   default: 12 units a family (training sets 1,000 and 4,000, label noise 0 and 0.4), one seed (about 30 min)
#   SCALE=full: 36 units a family (training sets 500, 1,000, 2,000, 4,000; noise 0, 0.2, 0.4); one part a seed:
#   run it for SEED=0, 1, 2 and copy each OUT/runs.csv beside verdict.py as runs-seed<SEED>.csv
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-outputs/generalisation-levers}
seed=${2:-0}
case "${SCALE:-default}" in
  default | full) ;;
  *) echo "run.sh: SCALE=${SCALE} is unknown; use SCALE=full or leave it unset (default)" >&2; exit 2 ;;
esac
if [[ "${SCALE:-default}" == full ]]; then n_train=500,1000,2000,4000 noise=0,0.2,0.4; else n_train=1000,4000 noise=0,0.4; fi
sweep() {
    sane-run experiment=generalisation_levers seed="$seed" dataset.n_train="$n_train" dataset.label_noise="$noise" \
        hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"
}
sweep model=mlp width=25,50,100 hydra.sweep.dir="$out/mlp"
sweep model=cnn model.channels=6,12,24 hydra.sweep.dir="$out/cnn"
sane-report "$out" -o "$out-report"
python "$here/../runs_table.py" "$out-report/summary.csv" "$out/runs.csv"
python "$here/verdict.py" "$out"
