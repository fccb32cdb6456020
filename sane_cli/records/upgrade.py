"""Run folders written by earlier versions, read in today's layout: config keys added since (with the value a
run written before them ran with) and the columns of hessian.csv and layers.csv as they were."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from .schema import HESSIAN_COLUMNS, LAYER_COLUMNS, config_value

# keys added since 0.9, each with the value a run written before it ran with (checked as if it had been set)
ADDED_KEYS = {"hessian.layers": False, "hessian.at_start": True, "dataset.label_noise": 0.0,
              "dataset.label_noise_seed": 0, "precision": "float32",
              "hessian.memory_gb": None}  # fmt: skip


def as_it_ran(config: dict[str, Any]) -> dict[str, Any]:
    """A run config as stored, with each of ADDED_KEYS that it lacks set to the value the run ran with."""
    out = json.loads(json.dumps(config))
    for key, value in ADDED_KEYS.items():
        parent, _, last = key.rpartition(".")
        node = config_value(out, parent) if parent else out
        if isinstance(node, dict) and last not in node:
            node[last] = value
    return out


def upgrade_hessian_table(df: pd.DataFrame, summary: dict[str, Any]) -> pd.DataFrame:
    """hessian.csv of runs written by earlier versions, in today's columns: before 0.2 there was no ``kind``
    (every checkpoint was scheduled); before 0.3 the threshold was ``two_over_lr`` (plain GD's 2/lr, which
    the runs of those versions were compared with) and there was no ``lambda_max_train``: it equals
    lambda_max where the Hessian was taken on the whole training set and is unknown (NaN) otherwise."""
    if "kind" not in df.columns:
        df["kind"] = "scheduled"
    if "two_over_lr" in df.columns and "stability_threshold" not in df.columns:
        df = df.rename(columns={"two_over_lr": "stability_threshold"})
    if "lambda_max_train" not in df.columns and "lambda_max" in df.columns and "subset" in df.columns:
        whole = df["subset"] == summary.get("n_train")
        df["lambda_max_train"] = df["lambda_max"].where(whole)
    if "log_evidence" not in df.columns and "sane_se" in df.columns:  # before 0.4
        df.insert(df.columns.get_loc("sane_se") + 1, "log_evidence", np.nan)
    if "preconditioned_sharpness" not in df.columns and "stability_threshold" in df.columns:  # before 0.5
        df.insert(df.columns.get_loc("stability_threshold"), "preconditioned_sharpness", np.nan)
    if "reorth" not in df.columns and "dtype" in df.columns:  # before 0.5 (slq's was the config's)
        df.insert(df.columns.get_loc("dtype") + 1, "reorth", None)
    if "n_eff_bound" not in df.columns and "sane_se" in df.columns:  # before 0.6
        df.insert(df.columns.get_loc("n_eff_se") + 1, "n_eff_bound", np.nan)
        df.insert(df.columns.get_loc("sane_se") + 1, "sane_bound", np.nan)
    if "weight_norm_sq" not in df.columns and "log_evidence" in df.columns:  # before 0.7
        df.insert(df.columns.get_loc("log_evidence") + 1, "weight_norm_sq", np.nan)
    df = _negative_columns(df)
    if set(df.columns) == set(HESSIAN_COLUMNS):
        df = df[HESSIAN_COLUMNS]
    return df


def upgrade_layer_table(df: pd.DataFrame) -> pd.DataFrame:
    """layers.csv of runs written by earlier versions, in today's columns (see :func:`_negative_columns`)."""
    df = _negative_columns(df)
    if set(df.columns) == set(LAYER_COLUMNS):
        df = df[LAYER_COLUMNS]
    return df


def _negative_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Before 0.15 there was no n_negative_se or negative_below, and slq's n_negative counted the Gauss nodes
    below 0 with no resolution (the mass of eigenvalues near 0 split across the sign at random): it is left empty.
    The threshold of the exact counts then is unknown (0 before 0.11); their standard error is 0."""
    if "n_negative_se" in df.columns or "n_negative" not in df.columns or "method" not in df.columns:
        return df
    estimated = df["method"].isin(["slq", "lanczos"])
    df = df.copy()
    df["n_negative"] = df["n_negative"].astype(object).where(~estimated, np.nan)
    at = df.columns.get_loc("n_negative") + 1
    df.insert(at, "n_negative_se", np.where(estimated, np.nan, 0.0))
    df.insert(at + 1, "negative_below", np.nan)
    return df
