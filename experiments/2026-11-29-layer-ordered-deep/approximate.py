"""Part (2) of the study: the study-(a) models at the state where each converged run stopped, measured with
the Hessian taken exactly, block-diagonally and banded (band 1) by sane-run's own `measure`, in one process so
that the seconds compare.

A run written by sane-run 0.8 or later saves the state at its stop criterion (its checkpoint.pt's step is its
steps_done): that state is measured as it is. An older run's checkpoint.pt holds an earlier scheduled state, so
it is trained again by `sane_cli.training.train` from its own config (with `hessian.method=block_diag`) into
OUT_RUNS/<run>, whose checkpoint.pt then holds the final state. float32 training on the CPU is not bitwise
reproducible across processes, so such a rerun may stop a few steps from the original (both are in
models.csv: step, step_study_a; N_eff there and in study (a): n_eff_exact, n_eff_study_a). Exact, block_diag
and block_band are measured on one state; the comparison is between methods.

Usage: python approximate.py RUNS_FOLDER OUT_RUNS [--seeds 0] [--out FILE]   (default: models.csv beside this)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from sane_cli.data import load_data
from sane_cli.losses import loss_function
from sane_cli.methods import measure
from sane_cli.models import build_model
from sane_cli.records import find_runs, load_run, read_checkpoint, status_of
from sane_cli.training import train

MEASURES = ("n_eff", "sane", "lambda_max", "trace")
KEYS = {"model": ("model", "name"), "depth": ("model", "depth"), "width": ("model", "width"),
        "model.channels": ("model", "channels"), "model.kernel": ("model", "kernel"),
        "model.pooling": ("model", "pooling")}  # fmt: skip


def measured(model, loss_fn, x, y, hessian, method: str) -> tuple[dict, float]:
    hcfg = OmegaConf.merge(hessian, {"method": method})
    start = time.perf_counter()
    row = measure(model, loss_fn, x, y, hcfg).row
    return row, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("out_runs", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models.csv")
    args = parser.parse_args()
    rows = []
    for folder in find_runs(args.runs):
        run = load_run(folder)
        if status_of(folder) != "converged" or int(run.config["seed"]) not in args.seeds:
            continue
        cfg = OmegaConf.create(run.config)
        checkpoint = read_checkpoint(folder)
        if int(checkpoint["step"]) != int(run.summary["steps_done"]):  # written before 0.8: train it again
            again = args.out_runs / folder.name
            if status_of(again) != "converged":
                shutil.rmtree(again, ignore_errors=True)
                # one thread, as each of the study's two parallel jobs had: the sums run in the same order
                train(OmegaConf.merge(cfg, {"hessian": {"method": "block_diag"}, "threads": 1}), again, progress=False)
            if status_of(again) != "converged":
                raise SystemExit(f"{again} did not reach the stop criterion")
            checkpoint = read_checkpoint(again)
        data = load_data(cfg.dataset)
        model = build_model(cfg.model, data.input_shape, data.n_classes)
        model.load_state_dict(checkpoint["model"])
        loss_fn = loss_function(cfg.loss, data.n_classes)
        exact, exact_seconds = measured(model, loss_fn, data.x_train, data.y_train, cfg.hessian, "exact")
        base = {k: OmegaConf.select(cfg, ".".join(path)) for k, path in KEYS.items()}
        base.update(seed=int(cfg.seed), step=int(checkpoint["step"]), n_params=int(run.summary["n_params"]))
        base.update(step_study_a=run.summary["steps_done"], n_eff_study_a=float(run.hessian.n_eff.iloc[-1]))
        for method in ("block_diag", "block_band"):
            approx, seconds = measured(model, loss_fn, data.x_train, data.y_train, cfg.hessian, method)
            row = {**base, "method": method, "seconds": seconds, "seconds_exact": exact_seconds}
            row.update({m: approx[m] for m in MEASURES} | {f"{m}_exact": exact[m] for m in MEASURES})
            rows.append(row)
        print(f"{folder.name}: exact {exact_seconds:.1f} s, N_eff {exact['n_eff']:.2f}", flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
