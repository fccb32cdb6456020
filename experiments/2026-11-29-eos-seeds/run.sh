#!/usr/bin/env bash
# The edge of stability with three seeds: full-batch GD at 4 learning rates, heavy-ball momentum and Adam at 2
# each, 3,000 steps of the default MLP on MNIST-1D, the exact Hessian every 100 steps.
# Usage: bash experiments/2026-11-29-eos-seeds/run.sh [OUT] [extra overrides...]   (OUT: outputs/eos-seeds)
set -euo pipefail
out=${1:-outputs/eos-seeds}
shift || true
sweep() { sane-run experiment=edge_of_stability seed=0,1,2 hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"; }
sweep hydra.sweep.dir="$out/gd" "$@"
sweep optim.momentum=0.9 lr=0.05,0.1 hydra.sweep.dir="$out/momentum" "$@"
sweep optim=adam lr=0.001,0.003 hydra.sweep.dir="$out/adam" "$@"
sane-report "$out" -o "$out-report"
