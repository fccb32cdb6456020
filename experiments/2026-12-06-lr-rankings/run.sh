#!/usr/bin/env bash
# Claim (b), models x learning rates: 24 MLPs (depth 3, width 16, 24, 32, 48 x label noise 0 to 0.5) trained by
# full-batch GD for a fixed 3,000 steps at lr 0.1, 0.3, 1 and 3; the exact Hessian every 300 steps; one runs table
# for verdict.py.
# Usage: [SCALE=full] bash experiments/2026-12-06-lr-rankings/run.sh [OUT] [SEED]
#   default: 12 models (width 16, 32, 48 x noise 0, 0.2, 0.3, 0.5), one seed (about 30 min)
#   SCALE=full: the 24 models; one part a seed: run it for SEED=0, 1, 2 and copy each OUT/runs.csv beside
#   verdict.py as runs-seed<SEED>.csv
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-outputs/lr-rankings}
seed=${2:-0}
case "${SCALE:-default}" in
  default | full) ;;
  *) echo "run.sh: SCALE=${SCALE} is unknown; use SCALE=full or leave it unset (default)" >&2; exit 2 ;;
esac
if [[ "${SCALE:-default}" == full ]]; then width=16,24,32,48 noise=0,0.1,0.2,0.3,0.4,0.5; else width=16,32,48 noise=0,0.2,0.3,0.5; fi
sane-run experiment=lr_rankings seed="$seed" width="$width" dataset.label_noise="$noise" lr=0.1,0.3,1,3 \
    hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/runs"
sane-report "$out" -o "$out-report"
python "$here/../runs_table.py" "$out-report/summary.csv" "$out/runs.csv"
python "$here/verdict.py" "$out"
