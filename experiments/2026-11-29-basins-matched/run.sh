#!/usr/bin/env bash
# Claim (c) against a matched null: the default MLP, full-batch GD at lr 0.5 and 1 x 5 seeds, 2,400 steps on all
# 4,000 MNIST-1D training examples, the exact Hessian every 10 steps and around every loss spike.
# Usage: bash experiments/2026-11-29-basins-matched/run.sh [OUT] [extra overrides...]   (OUT: outputs/basins-matched)
set -euo pipefail
out=${1:-outputs/basins-matched}
shift || true
sane-run experiment=basins_matched hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/runs" "$@"
sane-report "$out" -o "$out-report"
