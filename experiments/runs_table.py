"""One row per run, trimmed from sane-report's summary.csv: what a study's verdict.py reads.

Usage: python experiments/runs_table.py <report>/summary.csv <out.csv>

Columns: the study's levers under short names (size: an MLP's width or a CNN's channels; n_train, label_noise),
the run's status and seed, its final metrics and curvature, and the late means (the last third's checkpoints).
"""

from __future__ import annotations

import sys

import pandas as pd

RENAMED = {"dataset.n_train": "n_train", "dataset.label_noise": "label_noise"}
KEPT = ["model", "depth", "width", "size", "n_train", "label_noise", "lr", "seed", "status", "n_params", "steps_done",
        "train_loss", "train_acc", "test_loss", "test_acc", "lambda_max", "trace", "n_eff", "sane", "weight_norm_sq",
        "sane_late", "n_eff_late", "lambda_max_late", "trace_late", "sharpness_ratio_late", "late_checkpoints",
        "method", "wall_seconds", "run"]  # fmt: skip


def trimmed(summary: pd.DataFrame) -> pd.DataFrame:
    table = summary.rename(columns=RENAMED)
    channels = table["model.channels"] if "model.channels" in table else pd.Series(pd.NA, index=table.index)
    table["size"] = table.width.where(table.model == "mlp", channels)
    return table[[c for c in KEPT if c in table]].sort_values(["model", "size", "n_train", "label_noise", "lr", "seed"])


if __name__ == "__main__":
    trimmed(pd.read_csv(sys.argv[1])).to_csv(sys.argv[2], index=False)
