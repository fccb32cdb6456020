"""SLQ's quadrature error with the sampling error taken out: for the probes SLQ draws, the exact v^T f(H) v
from a dense float64 eigendecomposition, against SLQ's estimate of it, per setting and seed.

    python experiments/2026-11-29-slq-bias/probe_bias.py RUN_DIR OUT.csv [STEPS[:PROBES[:plain]] ...]

RUN_DIR is a finished exact run (its config and checkpoint.pt); the checkpoints are initialisation (rebuilt
from the run's seed) and the run's last step. SLQ runs as `sane-run hessian=slq` would: Hessian-vector
products in float32, the top 10 eigenpairs by Lanczos deflated, 8 Rademacher probes, seeds 0, 1, 2; extra
settings (full reorthogonalisation) as STEPS, STEPS:PROBES or STEPS:PROBES:plain (no deflation). The
columns: the SLQ estimate (averaged Gauss rule) and its standard error; the Gauss rule's estimate (the
estimator before sane-run 0.6); the bracket [lower, upper] and the bias bound max(upper - est, est - lower);
`probe_truth`, the same trace with the exact v^T f(H) v of the same probes; `exact`, tr f(H).
quad_z = (estimate - probe_truth) / se is the quadrature's bias in standard errors, free of sampling error.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from sane_cli.curvature import hessian
from sane_cli.data import load_data
from sane_cli.iterative import _probes, hvp_operator, lanczos, slq
from sane_cli.losses import loss_function
from sane_cli.models import build_model
from sane_cli.records import load_run

SEEDS, TOPK = (0, 1, 2), 10
# (reorthogonalisation, Lanczos steps, probes, deflation of the top 10 eigenpairs)
SETTINGS = [("none", 80, 8, True), ("full", 80, 8, True), ("full", 120, 8, True), ("full", 200, 8, True)]


def main(run_dir: str, out: str, settings=SETTINGS) -> None:
    run = load_run(Path(run_dir))
    cfg = OmegaConf.create(run.summary["config"])
    data = load_data(cfg.dataset)
    loss_fn = loss_function(cfg.loss, data.n_classes)
    checkpoint = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)
    rows = []
    for step in (0, int(checkpoint["step"])):
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model, data.input_shape, data.n_classes)
        if step:
            model.load_state_dict(checkpoint["model"])
        t0 = time.perf_counter()
        ev, q = torch.linalg.eigh(hessian(model, loss_fn, data.x_train, data.y_train, dtype=torch.float64))
        ev, q = ev.numpy(), q.numpy()
        logged = run.hessian.set_index("step").loc[step, "n_eff"]  # the rebuilt model is the run's
        print(
            f"step {step}: eigendecomposition of P = {len(ev)} in {time.perf_counter() - t0:.0f} s; N_eff "
            f"{np.sum(np.abs(ev) / (np.abs(ev) + 0.5)):.6f}, logged {logged:.6f}",
            flush=True,
        )
        matvec, p = hvp_operator(model, loss_fn, data.x_train, data.y_train, dtype=torch.float32)
        for seed in SEEDS:
            top = lanczos(matvec, p, TOPK, tol=1e-6, max_iter=300, seed=seed, dtype=torch.float32)
            scale = 0.5 * float(top.magnitudes[0])
            for reorth, steps, probes, deflated in settings:
                deflate = (top.values, top.vectors) if deflated else None
                v, exact_values, _ = _probes(p, probes, seed, torch.float64, "cpu", deflate)
                weights = (v.numpy() @ q) ** 2  # (probes, P): the probes' exact spectral measures
                t0 = time.perf_counter()
                quad = slq(matvec, p, probes=probes, steps=steps, seed=seed, reorthogonalize=reorth == "full",
                           reproject=reorth == "selective", deflate=deflate, dtype=torch.float32)  # fmt: skip
                seconds = time.perf_counter() - t0
                for name, a in (("n_eff", 0.5), ("sane", scale)):
                    g = lambda t, a=a: t / (t + a)  # noqa: E731
                    f = lambda t, g=g: g(np.abs(t))  # noqa: E731
                    est, se = quad.trace_of(f)
                    gauss = quad.trace_of(f, rule="gauss")[0]
                    lower, upper = quad.bracket_of(g)
                    truth = float(np.sum(f(exact_values)) + np.mean(weights @ f(ev)))
                    rows.append(dict(step=step, reorth=reorth, steps=steps, probes=probes, deflate=deflated,
                                     seed=seed, seconds=seconds, quantity=name, estimate=est, se=se, gauss=gauss,
                                     lower=lower, upper=upper,
                                     bound=max(upper - est, est - lower), probe_truth=truth,
                                     exact=float(np.sum(f(ev)))))  # fmt: skip
                print(pd.DataFrame(rows[-2:]).round(4).to_string(header=len(rows) == 2, index=False), flush=True)
    pd.DataFrame(rows).to_csv(out, index=False)


def _setting(arg: str) -> tuple:
    """STEPS[:PROBES[:plain]]: full reorthogonalisation, 8 probes and deflation unless said."""
    parts = arg.split(":")
    return ("full", int(parts[0]), int(parts[1]) if len(parts) > 1 else 8, "plain" not in parts[2:])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], SETTINGS + [_setting(a) for a in sys.argv[3:]])
