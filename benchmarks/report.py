"""sane-report over 50 runs, against the floor of reading the same run folders.

Writes 50 run folders the size of default runs (5 learning rates x 5 depths x 2 seeds; 2,000 steps of loss,
201 metrics rows, 11 exact-spectrum checkpoints of 4,000 eigenvalues with 10 eigenvectors each, two loss
spikes per run at the larger learning rates) with the project's own RunWriter, then times:

  read      load_run of every folder and every spectra file (the floor: what any report must read)
  report    sane_cli.report.report, serial (jobs=1) and with one process per CPU (the default)

Run:  python benchmarks/report.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from sane_cli.records import HESSIAN_COLUMNS, RunWriter, find_runs, load_run
from sane_cli.report import Options, report

P, STEPS, EVERY = 4000, 2000, 200


def write_run(folder: Path, lr: float, depth: int, seed: int) -> None:
    rng = np.random.default_rng(seed * 1000 + depth)
    w = RunWriter.create(folder)
    steps = np.arange(STEPS)
    loss = 2.3 * np.exp(-steps * lr / 100) + 0.1
    if lr >= 0.5:
        for s in (600, 1300):
            loss[s : s + 5] *= [2.0, 3.0, 2.5, 1.6, 1.2]
    for s, x in zip(steps, loss * (1 + 0.005 * rng.standard_normal(STEPS)), strict=True):
        w.log_step_loss(int(s), float(x))
    for s in range(0, STEPS + 1, 10):
        x = float(loss[min(s, STEPS - 1)])
        w.log_metrics({"step": s, "epoch": s, "train_loss": x, "train_acc": 1 - x / 3, "test_loss": 1.2 * x,
                       "test_acc": 1 - x / 2.5, "lr": lr})  # fmt: skip
    for s in range(0, STEPS + 1, EVERY):
        ev = np.sort(rng.standard_normal(P) * 0.01 + np.r_[rng.random(10) * min(2 / lr, 20), np.zeros(P - 10)])[::-1]
        vec = np.linalg.qr(rng.standard_normal((P, 10)))[0]
        row = dict.fromkeys(HESSIAN_COLUMNS, 0.0)
        row.update(step=s, lr=lr, method="exact", dtype="float64", n_params=P, kind="scheduled", lambda_max=ev[0],
                   lambda_max_train=ev[0], subset=4000, trace=ev.sum(),
                   n_eff=float(np.sum(np.abs(ev) / (np.abs(ev) + 0.5))),
                   sane=float(np.sum(np.abs(ev) / (np.abs(ev) + 0.5 * ev[0]))), stability_threshold=2 / lr,
                   sharpness_ratio=ev[0] * lr / 2, converged=True)  # fmt: skip
        w.log_curvature(row, ev, vec)
    config = {"optim": {"name": "gd", "lr": lr}, "model": {"depth": depth, "width": 24}, "seed": seed,
              "dataset": {"name": "mnist1d"}, "hessian": {"spike_threshold": 0.5, "k": 1, "rho": 0.5}}  # fmt: skip
    final = {"final_train_loss": float(loss[-1]), "final_test_loss": 1.2 * float(loss[-1]),
             "final_train_acc": 1 - loss[-1] / 3, "final_test_acc": 1 - loss[-1] / 2.5}  # fmt: skip
    w.write_summary({"status": "completed", "config": config, "n_params": P, "n_train": 4000, **final})
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the 50 run folders here")
    args = parser.parse_args()
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="sane-report-bench-"))
    if not find_runs(root):
        for i, (lr, depth, seed) in enumerate(itertools.product([0.05, 0.1, 0.2, 0.5, 1.0], [1, 2, 3, 4, 6], [0, 1])):
            write_run(root / "sweep" / f"{i}_lr={lr},depth={depth},seed={seed}", lr, depth, seed)
    runs = find_runs(root)

    start = time.perf_counter()
    for path in runs:
        run = load_run(path)
        for s in run.spectrum_steps():
            run.spectrum(s)
    t_read = time.perf_counter() - start

    times = {}
    for jobs in (1, None):
        start = time.perf_counter()
        report([root], root / f"report_{jobs}", Options(jobs=jobs))
        times[jobs] = time.perf_counter() - start
    print(f"{len(runs)} runs, {P} eigenvalues per checkpoint, {STEPS} steps")
    print(f"{'':<34}{'seconds':>9}{'/ read':>9}")
    print(f"{'read every run folder (floor)':<34}{t_read:>9.2f}{1:>9.1f}")
    print(f"{'sane-report, serial':<34}{times[1]:>9.2f}{times[1] / t_read:>9.1f}")
    print(f"{'sane-report, a process per CPU':<34}{times[None]:>9.2f}{times[None] / t_read:>9.1f}")


if __name__ == "__main__":
    main()
