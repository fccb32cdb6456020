"""Item beside the rule: does the reading at each learning rate hinge on N_eff's alpha or SANE's rho and k?
Each run's late mean of N_eff at alpha 0.05, 0.5, 5 and of SANE at rho 0.1, 0.5, 1 x k 1, 5, recomputed from its
saved spectra (the scheduled checkpoints of its last third), then each one's Spearman rho with test error across
the models at each learning rate (seeds averaged). Deciding nothing.

Usage: python sensitivity.py OUT.csv RUNS_TABLE.csv...   (the runs tables with their run folders on this disk)
       python sensitivity.py --show SENSITIVITY.csv...     (the rhos from tables written before)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from sane_cli.measures import n_eff, sane

SETTINGS = [("n_eff", a, None) for a in (0.05, 0.5, 5.0)] + [("sane", r, k) for r in (0.1, 0.5, 1.0) for k in (1, 5)]


def late_values(run: Path) -> dict[str, float]:
    h = pd.read_csv(run / "hessian.csv")
    h = h[h.kind == "scheduled"]
    late = h[h.step >= 2 / 3 * h.step.max()].step
    out: dict[str, list[float]] = {}
    for step in late:
        with np.load(run / "spectra" / f"step_{int(step)}.npz", allow_pickle=False) as f:
            ev = f["eigenvalues"]
        for name, a, k in SETTINGS:
            value = n_eff(ev, alpha=a) if k is None else sane(ev, rho=a, k=k)
            out.setdefault(f"{name}_{a:g}" + ("" if k is None else f"_k{k}"), []).append(value)
    return {key: float(np.mean(v)) for key, v in out.items()}


def show(table: pd.DataFrame) -> None:
    cols = [c for c in table.columns if c.startswith(("n_eff_", "sane_"))]
    for lr, sub in table.groupby("lr"):
        means = sub.groupby(["width", "label_noise"])[[*cols, "test_error"]].mean()
        rhos = ", ".join(f"{c} {spearmanr(means[c], means.test_error).statistic:+.2f}" for c in cols)
        print(f"lr {lr} ({len(means)} models): {rhos}")


if __name__ == "__main__":
    if sys.argv[1] == "--show":
        show(pd.concat([pd.read_csv(p) for p in sys.argv[2:]], ignore_index=True))
    else:
        runs = pd.concat([pd.read_csv(p) for p in sys.argv[2:]], ignore_index=True)
        runs = runs[runs.status == "completed"]
        rows = [{"width": r.width, "label_noise": r.label_noise, "lr": r.lr, "seed": r.seed,
                 "test_error": 1 - r.test_acc, **late_values(Path(r.run))} for r in runs.itertuples()]  # fmt: skip
        table = pd.DataFrame(rows)
        table.to_csv(sys.argv[1], index=False, float_format="%.6g")
        show(table)
