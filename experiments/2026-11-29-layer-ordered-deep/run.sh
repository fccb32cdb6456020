#!/usr/bin/env bash
# Claim (d): the layer-ordered approximations against exact, (1) on MLPs of width 16 and depth 4 to 16, 3 seeds,
# 11 checkpoints a run, and (2) on the study-(a) models (seed 0), each configuration run once per method.
# Usage: bash experiments/2026-11-29-layer-ordered-deep/run.sh [OUT] [MODELS]
#   OUT: outputs/layer-ordered; MODELS: the study-(a) run folders with their exact Hessians (outputs/models-trained)
set -euo pipefail
here=$(dirname "$0")
out=${1:-outputs/layer-ordered}
models=${2:-outputs/models-trained}
sane-run experiment=layer_ordered hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/deep"
sane-report "$out/deep" -o "$out/deep-report"
bash "$here/../2026-11-29-models-trained/run.sh" "$out/models" seed=0 hessian.method=block_diag,block_band
sane-report "$models" "$out/models" -o "$out/models-report"
python "$here/compare.py" "$out/deep-report" "$out/models-report"
