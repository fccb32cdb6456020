#!/usr/bin/env bash
# What keeping a sweep's jobs apart costs, and what it saves: sane-run's joblib launcher (each worker a pool of
# its own) against Hydra's own joblib launcher (one pool), 2 workers, on the same jobs:
#   - a 5-job sweep of the default run (lr 0.05 to 0.4): the wall time of each, the ratio, whether their files
#     are the same;
#   - the sweep of a linear model, 10 jobs of which the first 5 have their process killed (SIGKILL, as by the
#     out-of-memory killer) on their first training step: how many of the other 5 each completed, and its exit
#     status. (A job that fails by an error returns its outcome under either launcher: the app never raises.)
#   pip install -e ".[parallel]" && bash benchmarks/sweep_failures.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
cat > failing.py <<'PY'
import os
import signal

import torch
from torch import nn


def model(input_shape, n_classes):
    """A linear model whose process is killed on its first training step, as by the out-of-memory killer (the
    checks before a run pass)."""

    class Killed(nn.Linear):
        def forward(self, x):
            if self.training and x.device.type != "meta":
                os.kill(os.getpid(), signal.SIGKILL)
            return super().forward(x.flatten(1))

    return Killed(int(torch.tensor(input_shape).prod()), n_classes)


def works(input_shape, n_classes):
    """The same linear model, training as any."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), n_classes))
PY
export PYTHONPATH="$work"
hydras=hydra.launcher._target_=hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher
jobs="lr=0.05,0.1,0.2,0.3,0.4"
sane-run steps=1 hydra.run.dir=warm >/dev/null 2>&1  # the MNIST-1D cache and the imports, outside the timings
time_it() { local t0; t0=$(date +%s.%N); "$@" > /dev/null 2>&1 || true; python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)"; }
ours=$(time_it sane-run -m $jobs hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=ours)
theirs=$(time_it sane-run -m $jobs hydra/launcher=joblib hydra.launcher.n_jobs=2 $hydras hydra.sweep.dir=theirs)
failing="model=custom model.factory=failing:model,failing:works"  # the 5 killed jobs first, as Hydra orders them
sane-run -m $failing $jobs hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=ours-f > ours-f.log 2>&1 \
    && ours_rc=0 || ours_rc=$?
sane-run -m $failing $jobs hydra/launcher=joblib hydra.launcher.n_jobs=2 $hydras hydra.sweep.dir=theirs-f \
    > theirs-f.log 2>&1 && theirs_rc=0 || theirs_rc=$?
python3 - "$ours" "$theirs" "$ours_rc" "$theirs_rc" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ours, theirs, ours_rc, theirs_rc = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def same(a: Path, b: Path) -> bool:
    ok = True
    for job in sorted(a.glob("*_lr=*")):
        other = b / job.name
        for name in ("metrics.csv", "loss.csv"):
            ok &= (job / name).read_bytes() == (other / name).read_bytes()
        ok &= pd.read_csv(job / "hessian.csv").drop(columns="seconds").equals(
            pd.read_csv(other / "hessian.csv").drop(columns="seconds"))
        for f in (job / "spectra").glob("*.npz"):
            with np.load(f) as x, np.load(other / "spectra" / f.name) as y:
                ok &= all(np.array_equal(x[k], y[k]) for k in x.files)
    return bool(ok)


def completed(folder: str) -> int:
    return sum(json.loads(p.read_text())["status"] == "completed" for p in Path(folder).glob("*/summary.json"))


print(f"5 jobs, 2 workers: sane-run's joblib launcher {ours:.1f} s, Hydra's {theirs:.1f} s: ratio {ours / theirs:.2f}; "
      f"same files: {same(Path('ours'), Path('theirs'))}")
print(f"10 jobs, the first 5 killed: sane-run's launcher completed {completed('ours-f')} of the other 5 (exit "
      f"{ours_rc}), Hydra's {completed('theirs-f')} (exit {theirs_rc})")
PY
cd "$here" && rm -rf "$work"
