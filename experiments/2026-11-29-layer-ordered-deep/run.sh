#!/usr/bin/env bash
# Claim (d): the layer-ordered approximations against exact, (1) on MLPs of width 16 and depth 4 to 16, 3 seeds,
# 11 checkpoints a run, each configuration run once per method; and (2) on the study-(a) models at the state
# where each run stopped (trained again with block_diag, which saves that state), by approximate.py.
# Usage: bash experiments/2026-11-29-layer-ordered-deep/run.sh [OUT] [MODELS]
#   OUT: outputs/layer-ordered; MODELS: the study-(a) run folders with their exact Hessians (outputs/models-trained)
set -euo pipefail
here=$(dirname "$0")
out=${1:-outputs/layer-ordered}
models=${2:-outputs/models-trained}
sane-run experiment=layer_ordered hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir="$out/deep"
sane-report "$out/deep" -o "$out/deep-report"
python "$here/approximate.py" "$models" "$out/models" --out "$here/models.csv"
python "$here/compare.py" "$out/deep-report" "$here/models.csv"
