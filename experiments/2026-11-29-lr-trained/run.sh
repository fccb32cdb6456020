#!/usr/bin/env bash
# Claim (b) on trained nets: the depth-3 width-32 MLP, full-batch GD at 7 learning rates x 5 seeds on all 4,000
# MNIST-1D training examples to training accuracy 0.99; about 10 exact Hessians a run (hessian.every set per
# learning rate from the steps a pilot run needed), averaged over the last third of each run by sane-report.
# Usage: bash experiments/2026-11-29-lr-trained/run.sh [OUT] [extra overrides...]   (OUT: outputs/lr-trained)
set -euo pipefail
out=${1:-outputs/lr-trained}
shift || true
for lr_every in 0.25:1100 0.35:800 0.5:500 0.7:400 1.0:350 1.4:300 2.0:270; do
  lr=${lr_every%:*} every=${lr_every#*:}
  sane-run experiment=lr_trained lr="$lr" hessian.every="$every" hydra/launcher=joblib hydra.launcher.n_jobs=2 \
    hydra.sweep.dir="$out/lr-$lr" "$@"
done
sane-report "$out" -o "$out-report-all"
# the rule: a learning rate counts if at least 3 of its 5 seeds reached the criterion
counted=$(python -c '
import json, sys
from pathlib import Path
for lr in sorted(Path(sys.argv[1]).glob("lr-*")):
    done = [json.loads(p.read_text())["status"] == "converged" for p in lr.glob("*/summary.json")]
    if sum(done) >= 3:
        print(lr)
' "$out")
sane-report $counted --status converged --measures sane_late,n_eff_late,lambda_max_late,trace_late,sane,n_eff \
  -o "$out-report"
