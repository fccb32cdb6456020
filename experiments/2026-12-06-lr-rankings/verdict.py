"""The decision rule of this study (README.md) applied to the runs-*.csv tables beside this file.

Usage: python verdict.py [folder holding runs-*.csv]   (default: this file's folder)
Each runs-<part>.csv is one part of the study (a seed); the parts are combined here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import f_oneway

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decide import estimate, reading, spearman  # noqa: E402

MEASURES = ["sane_late", "n_eff_late"]  # each run's mean over its scheduled checkpoints in the last third
BESIDE = ["lambda_max_late", "trace_late"]  # reported, deciding nothing
TARGET = "test_error"  # 1 - test accuracy on the 1,000 clean test examples
MODEL_KEYS = ["width", "label_noise"]
MIN_SEEDS = 2  # a model counts at a learning rate if at least this many of its seeds completed there
EOS = 0.9  # premise: the largest lr's runs sit at or past the edge (median late sharpness ratio >= this)


def load(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("runs*.csv"))
    if not parts:
        sys.exit(f"verdict.py: no runs*.csv in {folder}; run run.sh first")
    runs = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    runs["test_error"] = 1 - runs.test_acc
    runs["unit"] = runs[MODEL_KEYS].astype(str).agg(" ".join, axis=1)
    return runs


def at_lr(runs: pd.DataFrame, *, seed: int = 0) -> dict:
    """One learning rate's completed runs: each measure's rho with test error across the models that count, and
    SANE's rho minus N_eff's (paired, from the same resamples)."""
    counted = runs.groupby("unit").filter(lambda g: len(g) >= MIN_SEEDS)
    cols = [TARGET, *MEASURES, *BESIDE]

    def stats(m: np.ndarray) -> np.ndarray:
        rhos = [spearman(m[..., 1 + j], m[..., 0]) for j in range(len(MEASURES) + len(BESIDE))]
        return np.stack([*rhos, rhos[0] - rhos[1]], axis=-1)

    point, lo, hi = estimate(counted, "unit", cols, stats, seed=seed)
    names = [*MEASURES, *BESIDE, "sane_minus_n_eff"]
    return {"models": counted.unit.nunique(), "runs": len(counted),
            **{n: (point[i], lo[i], hi[i]) for i, n in enumerate(names)}}  # fmt: skip


def decide(largest: dict) -> str:
    """The rule at the largest learning rate."""
    sane, diff = reading(*largest["sane_late"][1:]), reading(*largest["sane_minus_n_eff"][1:])
    if sane == "above 0" and diff == "above 0":
        return "reproduced"
    if diff == "below 0" or sane == "below 0":
        return "refuted"
    return "undecided"


def main(folder: Path) -> None:
    runs = load(folder)
    ended = runs[runs.status != "completed"]
    if len(ended):
        print(f"not completed ({len(ended)} runs): " + "; ".join(f"lr {r.lr} {r.unit} seed {r.seed}: {r.status}"
                                                                for r in ended.itertuples()))  # fmt: skip
    done = runs[runs.status == "completed"]
    lrs = sorted(done.lr.unique())
    results = {}
    for lr in lrs:
        sub = done[done.lr == lr]
        r = results[lr] = at_lr(sub)
        ratio = sub.sharpness_ratio_late.median()
        groups = [g.test_error.to_numpy() for _, g in sub.groupby("unit") if len(g) >= MIN_SEEDS]
        anova = f_oneway(*groups).pvalue if len(groups) > 1 and min(len(g) for g in groups) > 1 else np.nan
        print(f"lr {lr}: {r['models']} models, {r['runs']} runs; median late sharpness ratio {ratio:.2f}; test error "
              f"{sub.groupby('unit').test_error.mean().min():.3f}-{sub.groupby('unit').test_error.mean().max():.3f} "
              f"across models (one-way ANOVA over models p = {anova:.2g})")  # fmt: skip
        for name in [*MEASURES, *BESIDE, "sane_minus_n_eff"]:
            p, lo, hi = r[name]
            print(f"  {name}: {p:+.2f} [{lo:+.2f}, {hi:+.2f}] ({reading(lo, hi)})")
    largest = max(lrs)
    sub = done[done.lr == largest]
    ratio = sub.sharpness_ratio_late.median()
    groups = [g.test_error.to_numpy() for _, g in sub.groupby("unit") if len(g) >= MIN_SEEDS]
    anova = f_oneway(*groups).pvalue if len(groups) > 1 and min(len(g) for g in groups) > 1 else np.nan
    premise = ratio >= EOS and (np.isnan(anova) or anova < 0.05)
    print(f"premise at the largest lr ({largest}): median late sharpness ratio {ratio:.2f} (needs >= {EOS}); "
          f"models differ in test error (ANOVA p {anova:.2g}, needs < 0.05 where seeds allow): "
          f"{'met' if premise else 'NOT met'}")  # fmt: skip
    verdict = decide(results[largest]) if premise else "not judged (premise not met)"
    print(f"claim (b) at lr {largest}: {verdict}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
