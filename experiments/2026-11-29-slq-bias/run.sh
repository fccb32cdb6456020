#!/usr/bin/env bash
# SLQ against exact: for each net, one exact run and SLQ runs over reorthogonalisation x precision x seed (and
# Lanczos steps), all of the same training trajectory (threads=1 everywhere: at the edge of stability the
# trajectory depends on the order of floating-point sums, so the thread count must match). Checkpoints at
# initialisation and after 500 steps of the default recipe.
# Usage: bash experiments/2026-11-29-slq-bias/run.sh OUT "depth width name" ...   e.g. "4 48 7k" "6 64 20k" "8 64 28k"
set -euo pipefail
out=$1
shift
common=(steps=500 hessian.every=500 hessian.on_spike=false threads=1)
for net in "$@"; do
  set -- $net
  sane-run depth=$1 width=$2 hessian=exact "${common[@]}" hydra.run.dir="$out/exact_$3"
  sane-run -m depth=$1 width=$2 hessian=slq "${common[@]}" hessian.reorth=none,selective,full \
    hessian.dtype=float32,float64 hessian.seed=0,1,2 hydra.sweep.dir="$out/slq_$3"
  sane-run -m depth=$1 width=$2 hessian=slq "${common[@]}" hessian.reorth=selective,full hessian.dtype=float64 \
    hessian.steps=40,200 hessian.seed=0,1,2 hydra.sweep.dir="$out/slq_$3_steps"
done
