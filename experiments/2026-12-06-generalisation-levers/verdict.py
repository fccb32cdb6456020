"""The decision rule of this study (README.md) applied to the runs-*.csv tables beside this file.

Usage: python verdict.py [folder holding runs-*.csv]   (default: this file's folder)
Each runs-<part>.csv is one part of the study (a seed); the parts are combined here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decide import combine, completed, estimate, partial_spearman, parts, reading, spearman  # noqa: E402

MEASURES = ["n_eff", "sane"]  # the claim's measures, final checkpoint (N_eff alpha 0.5; SANE rho 0.5, k 1)
BESIDE = ["n_eff_fixed_prior"]  # N_eff at the prior precision 2,000 on the summed loss (alpha 2,000 / n_train)
BASELINES = ["log_params", "trace", "lambda_max", "weight_norm_sq", "train_loss", "epochs", "steps_done"]
TARGET = "test_error"  # 1 - test accuracy on MNIST-1D's 1,000 clean test examples
LEVERS = ["size", "n_train", "label_noise"]  # size: the MLP's width or the CNN's channels
EXPECTED = {"size": "-", "n_train": "-", "label_noise": "+"}  # each lever's expected sign with test error
PREMISE = {"mlp": 0.63, "cnn": 0.90}  # the family's best unit's test accuracy (the literature: 68 % / 94 %)
BATCH, STEPS = 100, 8000


def load(folder: Path) -> pd.DataFrame:
    runs = parts(folder, "runs*.csv")
    runs["test_error"] = 1 - runs.test_acc
    runs["log_params"] = np.log(runs.n_params)
    runs["epochs"] = STEPS * BATCH / runs.n_train
    if "n_eff_fixed_prior" not in runs:
        runs["n_eff_fixed_prior"] = np.nan
    runs["unit"] = runs[["model", *LEVERS]].astype(str).agg(" ".join, axis=1)
    return runs


def dummies(values: np.ndarray, levels: list) -> np.ndarray:
    """(..., units, len(levels) - 1): one indicator column per level but the first (the size held fixed)."""
    return np.stack([(values == lv).astype(float) for lv in levels[1:]], axis=-1)


def family_verdict(runs: pd.DataFrame, *, seed: int = 0, quiet: bool = False) -> dict:
    """The rule for one family's completed runs: per measure its partial rho with test error, the size (and so the
    parameter count) held fixed, which decides; its plain rho and the rest beside; and the family's verdict."""
    say = (lambda *a: None) if quiet else print
    shown = [*MEASURES, *(c for c in BESIDE if runs[c].notna().any())]  # a measure the tables lack is not shown
    cols = [TARGET, "size", "n_train", *shown, *BASELINES]
    varies = {c: runs.groupby("unit")[c].mean().nunique() > 1 for c in BASELINES}
    sizes = sorted(runs["size"].unique())
    n_trains = sorted(runs["n_train"].unique())
    k, b = len(shown), len(BASELINES)

    def stats(m: np.ndarray) -> np.ndarray:  # m: (..., units, columns) unit means
        err = m[..., 0]
        z_size = dummies(m[..., 1], sizes)
        z_both = np.concatenate([z_size, dummies(m[..., 2], n_trains)], axis=-1)
        out = [partial_spearman(m[..., 3 + j], err, z_size) for j in range(k)]  # deciding (MEASURES first)
        out += [spearman(m[..., 3 + j], err) for j in range(k)]
        out += [partial_spearman(m[..., 3 + j], err, z_both) for j in range(k)]
        out += [spearman(m[..., 3 + k + j], err) for j in range(b)]
        out += [partial_spearman(m[..., 3 + k + j], err, z_size) for j in range(b)]
        rho_params = spearman(m[..., 3 + k + BASELINES.index("log_params")], err)
        out += [out[k + j] - rho_params for j in range(k)]  # plain rho minus the parameter count's
        out.append(out[MEASURES.index("sane")] - out[MEASURES.index("n_eff")])  # SANE minus N_eff, partial
        return np.stack(out, axis=-1)

    point, lo, hi = estimate(runs, "unit", cols, stats, seed=seed)

    def ci(i: int) -> str:
        return f"{point[i]:+.2f} [{lo[i]:+.2f}, {hi[i]:+.2f}]"

    result = {"units": runs.unit.nunique(), "runs": len(runs), "readings": {}}
    say(f"  {result['units']} units, {result['runs']} runs (seeds {runs.groupby('unit').size().min()}-"
        f"{runs.groupby('unit').size().max()} a unit)")  # fmt: skip
    for j, name in enumerate(BASELINES):
        text = "constant across units" if not varies[name] else (
            f"rho {ci(3 * k + j)}; partial, size fixed {ci(3 * k + b + j)}")  # fmt: skip
        say(f"  baseline {name}: {text}")
    for j, name in enumerate(shown):
        partial = reading(lo[j], hi[j])
        line = (f"  {name}: partial rho, size fixed {ci(j)} ({partial}); plain rho {ci(k + j)}; partial, size and "
                f"training-set size fixed {ci(2 * k + j)}; plain rho minus the parameter count's "
                f"{ci(3 * k + 2 * b + j)}")  # fmt: skip
        if name in MEASURES:
            result["readings"][name] = {"above 0": "tracks", "below 0": "runs against"}.get(partial, "says nothing")
            line += f"; reading: {result['readings'][name]}"
        say(line)
    d = reading(lo[-1], hi[-1])
    result["sane_vs_neff"] = {"above 0": "SANE better", "below 0": "N_eff better"}.get(d, f"no difference shown ({d})")
    say(f"  SANE's partial rho minus N_eff's: {ci(len(point) - 1)}: {result['sane_vs_neff']}")
    reads = set(result["readings"].values())
    if "tracks" in reads and "runs against" not in reads:
        result["verdict"] = "reproduced"
    elif "tracks" not in reads and "runs against" in reads:
        result["verdict"] = "refuted"
    else:
        result["verdict"] = "undecided"
    return result


def main(folder: Path) -> None:
    runs = completed(load(folder), lambda r: f"{r.unit} seed {r.seed}")
    verdicts = {}
    for family, sub in runs.groupby("model", sort=True):
        print(f"{family}:")
        best = sub.groupby("unit").test_acc.mean()
        premise = best.max() >= PREMISE[family]
        print(f"  premise: best unit's test accuracy {best.max():.3f} ({best.idxmax()}), needs >= "
              f"{PREMISE[family]}: {'met' if premise else 'NOT met'}")  # fmt: skip
        for lever in LEVERS:
            lv = sub.groupby("unit")[[lever, TARGET]].mean()
            rho = float(spearman(lv[lever].to_numpy(), lv[TARGET].to_numpy()))
            print(f"  lever {lever}: rho with test error {rho:+.2f} (expected sign {EXPECTED[lever]})")
        result = family_verdict(sub)
        verdicts[family] = result["verdict"] if premise else "not judged (premise not met)"
        print(f"  {family}: claim (a) {verdicts[family]}")
    missing = ["missing"] * len(set(PREMISE) - set(verdicts))  # a family without runs is not reproduced
    print(f"overall: claim (a) {combine([*verdicts.values(), *missing])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
