#!/usr/bin/env bash
# A 4-job sweep (the default run at lr 0.05, 0.1, 0.2, 0.4), one job after another (Hydra's basic launcher)
# with torch on every core (the default) and with 1 thread, against 2 joblib workers (hydra/launcher=joblib,
# torch threads = cores / 2 per job), each in a scratch folder; prints the wall times, the ratios, and
# whether every job's metrics.csv, loss.csv, spectra and hessian.csv (less its timing column) are the same
# as in the parallel sweep (results depend on the thread count: BLAS sums in another order).
#   pip install -e ".[parallel]" && bash benchmarks/parallel.sh
set -euo pipefail
work=$(mktemp -d)
cd "$work"
sweep="lr=0.05,0.1,0.2,0.4"
sane-run --help >/dev/null  # warm the imports and the MNIST-1D cache outside the timings
sane-run steps=1 hydra.run.dir=warm >/dev/null 2>&1
t0=$(date +%s.%N)
sane-run -m $sweep hydra.sweep.dir=seq >seq.log 2>&1
t1=$(date +%s.%N)
sane-run -m $sweep hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=par >par.log 2>&1
t2=$(date +%s.%N)
sane-run -m $sweep threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )) hydra.sweep.dir=seq1 >seq1.log 2>&1
t3=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
from pathlib import Path

import numpy as np
import pandas as pd

t0, t1, t2, t3 = map(float, sys.argv[1:])


def same_as_parallel(folder: str) -> bool:
    same = True
    for job in sorted(Path(folder).glob("*_lr=*")):
        other = Path("par") / job.name.replace(f",threads={job.name.split('threads=')[-1]}", "") if "threads=" in job.name else Path("par") / job.name
        for name in ("metrics.csv", "loss.csv"):
            same &= (job / name).read_bytes() == (other / name).read_bytes()
        a, b = (pd.read_csv(d / "hessian.csv").drop(columns="seconds") for d in (job, other))
        same &= a.equals(b)
        for f in (job / "spectra").glob("*.npz"):
            with np.load(f) as x, np.load(other / "spectra" / f.name) as y:
                same &= all(np.array_equal(x[k], y[k]) for k in x.files)
    return bool(same)


seq, par, seq1 = t1 - t0, t2 - t1, t3 - t2
print(f"sequential, torch on every core   {seq:6.1f} s   same numbers as joblib: {same_as_parallel('seq')}")
print(f"sequential, threads as in joblib  {seq1:6.1f} s   same numbers as joblib: {same_as_parallel('seq1')}")
print(f"joblib, 2 workers                 {par:6.1f} s   speed-up {seq / par:.2f}x and {seq1 / par:.2f}x")
PY
rm -rf "$work"
