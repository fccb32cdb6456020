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
from decide import estimate, partial_spearman, reading, spearman  # noqa: E402

MEASURES = ["n_eff", "sane"]  # the claim's measures, final checkpoint (N_eff alpha 0.5; SANE rho 0.5, k 1)
BASELINES = ["log_params", "trace", "lambda_max", "weight_norm_sq", "steps_done"]
TARGET = "test_error"  # 1 - test accuracy on MNIST-1D's 1,000 clean test examples
LEVERS = ["size", "n_train", "label_noise"]  # size: the MLP's width or the CNN's channels
PREMISE = {"mlp": 0.63, "cnn": 0.90}  # the family's best unit's test accuracy (the literature: 68 % / 94 %)


def load(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("runs*.csv"))
    if not parts:
        sys.exit(f"verdict.py: no runs*.csv in {folder}; run run.sh first")
    runs = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    runs["test_error"] = 1 - runs.test_acc
    runs["log_params"] = np.log(runs.n_params)
    runs["unit"] = runs[["model", *LEVERS]].astype(str).agg(" ".join, axis=1)
    return runs


def family_verdict(runs: pd.DataFrame, *, seed: int = 0, quiet: bool = False) -> dict:
    """The rule for one family's completed runs: per measure its rho with test error, its partial rho with the
    parameter count held fixed, its reading, and the family's verdict."""
    say = (lambda *a: None) if quiet else print
    cols = [TARGET, *MEASURES, *BASELINES]
    varies = {c: runs.groupby("unit")[c].mean().nunique() > 1 for c in BASELINES}

    def stats(m: np.ndarray) -> np.ndarray:  # m: (..., units, columns) unit means
        err = m[..., 0]
        out = [spearman(m[..., 1 + j], err) for j in range(len(MEASURES) + len(BASELINES))]
        params = m[..., cols.index("log_params")][..., None]
        out += [partial_spearman(m[..., 1 + j], err, params) for j in range(len(MEASURES))]
        rho_params = spearman(m[..., cols.index("log_params")], err)
        out += [out[j] - rho_params for j in range(len(MEASURES))]  # measure minus parameter count
        out.append(out[MEASURES.index("sane")] - out[MEASURES.index("n_eff")])  # SANE minus N_eff
        return np.stack(out, axis=-1)

    point, lo, hi = estimate(runs, "unit", cols, stats, seed=seed)
    k, b = len(MEASURES), len(BASELINES)
    result = {"units": runs.unit.nunique(), "runs": len(runs), "readings": {}}
    say(f"  {result['units']} units, {result['runs']} runs (seeds {runs.groupby('unit').size().min()}-"
        f"{runs.groupby('unit').size().max()} a unit)")  # fmt: skip
    for j, name in enumerate(BASELINES):
        i = k + j
        text = "constant across units (fixed budget)" if not varies[name] else (
            f"rho {point[i]:+.2f} [{lo[i]:+.2f}, {hi[i]:+.2f}]")  # fmt: skip
        say(f"  baseline {name}: {text}")
    for j, name in enumerate(MEASURES):
        marginal = reading(lo[j], hi[j])
        partial = reading(lo[k + b + j], hi[k + b + j]) if varies["log_params"] else marginal
        beats = reading(lo[2 * k + b + j], hi[2 * k + b + j]) if varies["log_params"] else "undefined"
        tracks = marginal == "above 0" and partial == "above 0"
        against = marginal == "below 0"
        result["readings"][name] = "tracks" if tracks else "runs against" if against else "says nothing"
        say(f"  {name}: rho {point[j]:+.2f} [{lo[j]:+.2f}, {hi[j]:+.2f}] ({marginal}); partial, parameter count "
            f"fixed {point[k + b + j]:+.2f} [{lo[k + b + j]:+.2f}, {hi[k + b + j]:+.2f}] ({partial}); minus "
            f"parameter count's rho {point[2 * k + b + j]:+.2f} [{lo[2 * k + b + j]:+.2f}, "
            f"{hi[2 * k + b + j]:+.2f}]: {'beats' if beats == 'above 0' else 'does not beat'} parameter count; "
            f"reading: {result['readings'][name]}")  # fmt: skip
    d = reading(lo[-1], hi[-1])
    result["sane_vs_neff"] = {"above 0": "SANE better", "below 0": "N_eff better"}.get(d, f"no difference shown ({d})")
    say(f"  SANE's rho minus N_eff's: {point[-1]:+.2f} [{lo[-1]:+.2f}, {hi[-1]:+.2f}]: {result['sane_vs_neff']}")
    reads = set(result["readings"].values())
    if "tracks" in reads and "runs against" not in reads:
        result["verdict"] = "reproduced"
    elif "tracks" not in reads and "runs against" in reads:
        result["verdict"] = "refuted"
    else:
        result["verdict"] = "undecided"
    return result


def main(folder: Path) -> None:
    runs = load(folder)
    ended = runs[runs.status != "completed"]
    if len(ended):
        print(f"left out ({len(ended)} runs not completed): " + "; ".join(f"{r.unit} seed {r.seed}: {r.status}"
                                                                       for r in ended.itertuples()))  # fmt: skip
    runs = runs[runs.status == "completed"]
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
            print(f"  lever {lever}: rho with test error {rho:+.2f}")
        result = family_verdict(sub)
        verdicts[family] = result["verdict"] if premise else "not judged (premise not met)"
        print(f"  {family}: claim (a) {verdicts[family]}")
    values = set(verdicts.values())
    if values == {"reproduced"} and len(values) == 1 and set(verdicts) == set(PREMISE):
        overall = "reproduced"
    elif "refuted" in values and "reproduced" not in values:
        overall = "refuted"
    else:
        overall = "undecided"
    print(f"overall: claim (a) {overall}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
