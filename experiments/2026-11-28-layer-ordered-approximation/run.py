"""Study: the layer-ordered Hessian approximations against the exact Hessian, depths 2 to 8.

For each depth, an MLP (width 24, ReLU) is trained on MNIST-1D with the default recipe (full-batch GD,
lr 0.2) for `--steps` steps; at initialisation and at the end, the exact Hessian of the default Hessian
subset (256 examples) is compared with block_diag and block_band(1):

  top10_rel_err   max over the 10 largest eigenvalues of |approx - exact| / |exact|
  sane_rel_err    |SANE(approx) / SANE(exact) - 1|, SANE(rho=0.5, k=1)
  neff_rel_err    |N_eff(approx) / N_eff(exact) - 1|, alpha = 0.5
  w1_rel          Wasserstein-1 distance between the two eigenvalue distributions, divided by the mean
                  |eigenvalue| of the exact one (0 = same spectrum)
  seconds         time of the approximation (Hessian blocks and eigenvalues), beside exact_seconds

Run from the repository root:  python experiments/2026-11-28-layer-ordered-approximation/run.py
Writes results.csv beside this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_module

from sane_cli.curvature import layer_hessian, spectrum
from sane_cli.data import load_data
from sane_cli.losses import loss_function
from sane_cli.measures import n_eff, sane, spectrum_distance
from sane_cli.methods import _block_diag_spectrum
from sane_cli.models import build_model
from sane_cli.training import train

HERE = Path(__file__).parent


def timed(fn):
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def compare(model, loss_fn, x, y) -> list[dict]:
    exact, t_exact = timed(lambda: spectrum(layer_hessian(model, loss_fn, x, y)).eigenvalues)
    approx = {
        "block_diag": timed(lambda: _block_diag_spectrum(model, loss_fn, x, y, torch.float64, 0)[0]),
        "block_band1": timed(lambda: spectrum(layer_hessian(model, loss_fn, x, y, band=1)).eigenvalues),
    }
    rows = []
    for name, (ev, seconds) in approx.items():
        rows.append({
            "method": name, "seconds": seconds, "exact_seconds": t_exact,
            "lambda_max_exact": exact[0],
            "top10_rel_err": float(np.max(np.abs(ev[:10] - exact[:10]) / np.abs(exact[:10]))),
            "sane_exact": sane(exact), "sane_rel_err": abs(sane(ev) / sane(exact) - 1),
            "neff_exact": n_eff(exact), "neff_rel_err": abs(n_eff(ev) / n_eff(exact) - 1),
            "w1_rel": spectrum_distance(exact, None, ev, None),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    args = parser.parse_args()
    rows = []
    for depth in args.depths:
        with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
            overrides = [f"depth={depth}", f"steps={args.steps}", "hessian.every=100000", "hessian.topk_vectors=0",
                         "device=cpu", "hessian.subset=256"]  # fmt: skip
            cfg = compose("config", overrides=overrides)
        data = load_data(cfg.dataset)
        x, y = data.hessian_subset(cfg.hessian.subset, cfg.seed)
        loss_fn = loss_function(cfg.loss, data.n_classes)
        torch.manual_seed(cfg.seed)
        init = build_model(cfg.model, data.in_dim, data.n_classes)
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp) / "run", progress=False)
            state = torch.load(Path(tmp) / "run" / "checkpoint.pt")
        final = build_model(cfg.model, data.in_dim, data.n_classes)
        final.load_state_dict(state["model"])
        n_params = sum(p.numel() for p in final.parameters())
        for when, model in (("init", init), (f"step {args.steps}", final)):
            for row in compare(model, loss_fn, x, y):
                rows.append({"depth": depth, "n_params": n_params, "checkpoint": when, **row})
                print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "results.csv", index=False, float_format="%.6g")
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
