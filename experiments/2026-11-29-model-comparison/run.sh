#!/usr/bin/env bash
# The model-comparison study: 20 models (11 MLPs, 9 CNNs) x 2 seeds trained by full-batch GD to training loss
# 0.8 on MNIST-1D (1,000 training examples), exact Hessians at the stop; then one report over all of them.
# Usage: bash experiments/2026-11-29-model-comparison/run.sh [OUT] [extra overrides...]   (OUT: outputs/mc)
# Reports: OUT-report (every converged run), OUT-report-cnn and OUT-report-mlp (one family each).
set -euo pipefail
out=${1:-outputs/mc}
shift || true
sweep() { sane-run experiment=model_comparison seed=0,1 hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"; }
sweep model=mlp depth=2,3,4 width=16,32 hydra.sweep.dir="$out/mlp" "$@"
sweep model=mlp depth=2 width=64 hydra.sweep.dir="$out/mlp-wide" "$@"
sweep model=mlp depth=3 width=48 hydra.sweep.dir="$out/mlp-wide3" "$@"
sweep model=mlp depth=6 width=16,32 hydra.sweep.dir="$out/mlp-deep" "$@"
sweep model=mlp depth=8 width=16 hydra.sweep.dir="$out/mlp-deeper" "$@"
sweep model=cnn depth=1,2,3 model.channels=4,8 hydra.sweep.dir="$out/cnn" "$@"
sweep model=cnn depth=2,3 model.channels=8 model.kernel=5 hydra.sweep.dir="$out/cnn-k5" "$@"
sweep model=cnn depth=2 model.channels=8 model.pooling=avg hydra.sweep.dir="$out/cnn-avg" "$@"
# the comparison: the runs that reached the criterion, all together and within each family
sane-report "$out" --status converged -o "$out-report"
sane-report "$out"/cnn* --status converged -o "$out-report-cnn"
sane-report "$out"/mlp* --status converged -o "$out-report-mlp"
