#!/usr/bin/env bash
# Data-parallel speed on one machine: the same run as 1 rank x N threads (plain sane-run) and as N ranks x 1 thread
# (torchrun --nproc_per_node N, gloo), N = the machine's cores, alternated REPEAT times, each in a scratch folder;
# prints each run's wall time, the median ratio (N ranks / 1 rank: below 1 is faster), and how far the 2-rank
# run's numbers are from the 1-rank run's (float64 training: rounding only).
#   bash benchmarks/distributed.sh                  an MNIST-1D MLP of width 256 (78,858 parameters), SLQ
#   REPEAT=5 ARGS="width=128 hessian=exact" bash benchmarks/distributed.sh
set -euo pipefail
n=${N:-$(nproc)}
repeat=${REPEAT:-3}
args=${ARGS:-"width=256 steps=200 hessian.every=100 hessian=slq precision=float64"}
work=$(mktemp -d)
cd "$work"
sane-run steps=1 hydra.run.dir=warm >/dev/null 2>&1  # the MNIST-1D cache and the imports, outside the timings
times=()
for i in $(seq "$repeat"); do
  for mode in one many; do
    start=$(date +%s.%N)
    if [[ $mode == one ]]; then
      # shellcheck disable=SC2086
      sane-run $args threads="$n" hydra.run.dir="$mode-$i" >"$mode-$i.log" 2>&1
    else
      # shellcheck disable=SC2086
      torchrun --standalone --nproc_per_node "$n" --no-python sane-run $args threads=1 hydra.run.dir="$mode-$i" \
        >"$mode-$i.log" 2>&1
    fi
    end=$(date +%s.%N)
    times+=("$mode $(echo "$end - $start" | bc)")
    echo "${times[-1]} s"
  done
done
python3 - "$n" "${times[@]}" <<'PY'
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

n, rows = sys.argv[1], [r.split() for r in sys.argv[2:]]
one = [float(t) for m, t in rows if m == "one"]
many = [float(t) for m, t in rows if m == "many"]
ratios = [b / a for a, b in zip(one, many)]
print(f"1 rank x {n} threads: median {statistics.median(one):.1f} s; {n} ranks x 1 thread: median "
      f"{statistics.median(many):.1f} s; ratio {n} ranks / 1 rank: median {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
worst = 0.0
for name in ("hessian.csv", "metrics.csv"):
    a, b = pd.read_csv(Path("one-1") / name), pd.read_csv(Path("many-1") / name)
    cols = [c for c in a.select_dtypes("number").columns if c != "seconds"]
    scale = np.maximum(np.abs(a[cols]).max(), np.abs(a["lambda_max"]).max() if "lambda_max" in a else 0.0)
    worst = max(worst, float(((a[cols] - b[cols]).abs() / scale.replace(0, 1)).max().max()))
print(f"largest difference between the runs' numbers, relative to each column's scale: {worst:.1e}")
PY
rm -rf "$work"
