"""One row per run, trimmed from sane-report's summary.csv: what a study's verdict.py reads.

Usage: python experiments/runs_table.py <report>/summary.csv <out.csv>

Columns: the study's levers under short names (size: an MLP's width or a CNN's channels; n_train, label_noise),
the run's status and seed, its final metrics and curvature, the late means (the last third's checkpoints), and
n_eff_fixed_prior: N_eff of the final spectrum at alpha = PRIOR / examples, the evidence framework's gamma at one
prior precision (PRIOR) on the summed loss whatever the training set's size (N_eff(alpha) on the mean loss is
gamma at prior alpha x examples), read from the run folder's spectra where it is there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sane_cli.measures import n_eff

RENAMED = {"dataset.n_train": "n_train", "dataset.label_noise": "label_noise"}
KEPT = ["model", "depth", "width", "size", "n_train", "label_noise", "lr", "seed", "status", "n_params", "steps_done",
        "train_loss", "train_acc", "test_loss", "test_acc", "lambda_max", "trace", "n_eff", "sane", "weight_norm_sq",
        "n_eff_fixed_prior", "hessian_examples",
        "sane_late", "n_eff_late", "lambda_max_late", "trace_late", "sharpness_ratio_late", "late_checkpoints",
        "method", "wall_seconds", "run"]  # fmt: skip


PRIOR = 2000.0  # 0.5 x 4,000: the default N_eff's prior precision on MNIST-1D's full training set


def fixed_prior_n_eff(row: pd.Series) -> float:
    """N_eff at alpha = PRIOR / examples of the run's final spectrum (|eigenvalues|); NaN without it."""
    step = row.get("curvature_step", np.nan)
    if not np.isfinite(step):  # no final curvature (a diverged run, a disagreeing record)
        return np.nan
    path = Path(str(row.get("run", ""))) / "spectra" / f"step_{int(step)}.npz"
    if not path.is_file():
        return np.nan
    with np.load(path, allow_pickle=False) as f:
        return n_eff(f["eigenvalues"], alpha=PRIOR / float(row.hessian_examples))


def trimmed(summary: pd.DataFrame) -> pd.DataFrame:
    table = summary.rename(columns=RENAMED)
    channels = table["model.channels"] if "model.channels" in table else pd.Series(pd.NA, index=table.index)
    table["size"] = table.width.where(table.model == "mlp", channels)
    table["n_eff_fixed_prior"] = table.apply(fixed_prior_n_eff, axis=1)
    return table[[c for c in KEPT if c in table]].sort_values(["model", "size", "n_train", "label_noise", "lr", "seed"])


if __name__ == "__main__":
    trimmed(pd.read_csv(sys.argv[1])).to_csv(sys.argv[2], index=False)
