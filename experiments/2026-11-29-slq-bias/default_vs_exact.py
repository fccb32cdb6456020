"""The default SLQ (sane-run's config, through sane_cli.methods.measure) against exact eigenvalues, sampling
error included, over hessian.seed 0-3, at initialisation and after 500 full-batch GD steps at lr 0.2:

    python experiments/2026-11-29-slq-bias/default_vs_exact.py DEPTH WIDTH OUT_DIR

Writes OUT_DIR/result.json and the eigenvalues OUT_DIR/ev_step<step>.npy. Eigenvalues only (no
eigenvectors), so it reaches nets whose eigenvectors would not fit: 28,234 parameters need about 13 GB
and 20 minutes per checkpoint on 2 cores."""

import json
import sys
import time

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sane_cli.curvature import hessian
from sane_cli.data import load_data
from sane_cli.losses import loss_function
from sane_cli.methods import measure
from sane_cli.models import build_model

with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
    cfg = compose("config", overrides=[f"depth={sys.argv[1]}", f"width={sys.argv[2]}"])
data = load_data(cfg.dataset)
torch.manual_seed(int(cfg.seed))
model = build_model(cfg.model, data.input_shape, data.n_classes)
loss_fn = loss_function(cfg.loss, data.n_classes)
out = {}
for step in (0, 500):
    if step:
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(500):
            opt.zero_grad()
            loss_fn(model(data.x_train), data.y_train).backward()
            opt.step()
    t = time.perf_counter()
    h = hessian(model, loss_fn, data.x_train, data.y_train, dtype=torch.float64)
    ev = torch.linalg.eigvalsh(h).numpy()
    del h
    a = np.abs(ev)
    ex = {
        "n_eff": float(np.sum(a / (a + 0.5))),
        "sane": float(np.sum(a / (a + 0.5 * a.max()))),
        "lambda_max": float(ev.max()),
    }
    print(f"step {step}: exact in {time.perf_counter() - t:.0f} s", ex, flush=True)
    np.save(f"{sys.argv[3]}/ev_step{step}.npy", ev)
    rows = []
    for seed in range(4):
        hcfg = OmegaConf.merge(cfg.hessian, {"seed": seed})
        t = time.perf_counter()
        r = measure(model, loss_fn, data.x_train, data.y_train, hcfg)
        row = {k: float(r.row[k]) for k in ("n_eff", "n_eff_se", "n_eff_bound", "sane", "sane_se", "sane_bound")}
        row.update(
            seconds=time.perf_counter() - t,
            method=r.method,
            dtype=r.dtype,
            seed=seed,
            n_eff_z=(row["n_eff"] - ex["n_eff"]) / row["n_eff_se"],
            sane_z=(row["sane"] - ex["sane"]) / row["sane_se"],
        )
        print(step, row, flush=True)
        rows.append(row)
    out[step] = {"exact": ex, "slq": rows}
    json.dump(out, open(f"{sys.argv[3]}/result.json", "w"), indent=1)
