#!/usr/bin/env bash
# Wall time of whole runs, from the command line as a user types them, in a scratch folder.
#   bash benchmarks/runs.sh            the default study and `sane-run lr=0.5 depth=8`
# Prints one line per command: seconds of wall time, and the run's status and checkpoint count.
set -euo pipefail
work=$(mktemp -d)
cd "$work"
export XDG_CACHE_HOME="$work/cache"  # a cold MNIST-1D cache: the first run generates the data, as on a new machine
i=0
for args in "" "lr=0.5 depth=8"; do
  i=$((i + 1))
  dir="run_$i"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  sane-run $args hydra.run.dir="$dir" >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
  end=$(date +%s.%N)
  status=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$dir/summary.json")
  checkpoints=$(($(wc -l <"$dir/hessian.csv") - 1))
  printf 'sane-run %-16s %6.1f s  status %s, %d curvature checkpoints\n' "${args:-(defaults)}" "$(echo "$end - $start" | bc)" "$status" "$checkpoints"
done
rm -rf "$work"
