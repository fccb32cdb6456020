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
from decide import completed, estimate, partial_spearman, parts, reading, spearman  # noqa: E402

MEASURES = ["sane_late", "n_eff_late"]  # each run's mean over its scheduled checkpoints in the last third
BESIDE = ["lambda_max_late", "trace_late"]  # reported, deciding nothing
TARGET = "test_error"  # 1 - test accuracy on the 1,000 clean test examples
MODEL_KEYS = ["width", "label_noise"]
MIN_SEEDS = 2  # a model counts at a learning rate if this many of its seeds completed there (1 for one seed)
EOS = 0.9  # premise: the deciding lr's runs sit at or past the edge (median late sharpness ratio >= this)
APART = 2.0  # premise: SANE's own alpha (rho x lambda_max) at least this factor from N_eff's (else they coincide)
ALPHA, RHO = 0.5, 0.5  # N_eff's alpha and SANE's rho (k 1: SANE = N_eff at alpha = RHO x lambda_max)


def load(folder: Path) -> pd.DataFrame:
    runs = parts(folder, "runs*.csv")
    runs["test_error"] = 1 - runs.test_acc
    runs["unit"] = runs[MODEL_KEYS].astype(str).agg(" ".join, axis=1)
    return runs


def at_lr(runs: pd.DataFrame, *, seed: int = 0) -> dict:
    """One learning rate's completed runs: each measure's rho with test error across the models that count, and
    SANE's rho minus N_eff's (paired, from the same resamples)."""
    least = min(MIN_SEEDS, int(runs.seed.nunique())) if len(runs) else MIN_SEEDS
    counted = runs.groupby("unit").filter(lambda g: len(g) >= least)
    cols = [TARGET, *MEASURES, *BESIDE, "label_noise"]
    levels = sorted(runs.label_noise.unique()) if len(runs) else []

    def stats(m: np.ndarray) -> np.ndarray:
        rhos = [spearman(m[..., 1 + j], m[..., 0]) for j in range(len(MEASURES) + len(BESIDE))]
        noise = np.stack([(m[..., -1] == lv).astype(float) for lv in levels[1:]], axis=-1)
        held = [partial_spearman(m[..., 1 + j], m[..., 0], noise) for j in range(len(MEASURES))]
        between = spearman(m[..., 1], m[..., 2])  # SANE against N_eff across the models
        return np.stack([*rhos, rhos[0] - rhos[1], *held, between], axis=-1)

    if counted.empty:
        return {"models": 0, "runs": 0}
    point, lo, hi = estimate(counted, "unit", cols, stats, seed=seed)
    names = [*MEASURES, *BESIDE, "sane_minus_n_eff", "sane_late_noise_fixed", "n_eff_late_noise_fixed",
             "sane_vs_n_eff"]  # fmt: skip
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


def premise(sub: pd.DataFrame) -> tuple[bool, str]:
    """At one learning rate: its runs at or past the edge, the models differing in test error, and SANE and N_eff
    apart (SANE's alpha, RHO x lambda_max, at least APART from N_eff's ALPHA)."""
    ratio = sub.sharpness_ratio_late.median()
    groups = [g.test_error.to_numpy() for _, g in sub.groupby("unit")]
    seeded = len(groups) > 1 and min(len(g) for g in groups) > 1
    anova = f_oneway(*groups).pvalue if seeded else np.nan
    alpha = RHO * sub.lambda_max_late.median()
    apart = max(alpha / ALPHA, ALPHA / alpha) if alpha > 0 else np.nan
    ok = ratio >= EOS and apart >= APART and (anova < 0.05 if seeded else True)
    text = (f"median late sharpness ratio {ratio:.2f} (needs >= {EOS}); SANE's alpha {alpha:.3g} against N_eff's "
            f"{ALPHA}: a factor {apart:.2f} apart (needs >= {APART}); models differ in test error: "
            + (f"ANOVA p {anova:.2g} (needs < 0.05)" if seeded else "not checked (one seed)"))  # fmt: skip
    return bool(ok), text


def main(folder: Path) -> None:
    done = completed(load(folder), lambda r: f"lr {r.lr} {r.unit} seed {r.seed}")
    results, premises = {}, {}
    for lr in sorted(done.lr.unique()):
        sub = done[done.lr == lr]
        r = results[lr] = at_lr(sub)
        premises[lr] = premise(sub)
        print(f"lr {lr}: {r['models']} models, {r['runs']} runs; test error "
              f"{sub.groupby('unit').test_error.mean().min():.3f}-{sub.groupby('unit').test_error.mean().max():.3f} "
              f"across models; premise {'met' if premises[lr][0] else 'NOT met'}: {premises[lr][1]}")  # fmt: skip
        for name in [*MEASURES, *BESIDE, "sane_minus_n_eff", "sane_late_noise_fixed", "n_eff_late_noise_fixed",
                     "sane_vs_n_eff"]:  # fmt: skip
            if name in r:
                p, lo, hi = r[name]
                print(f"  {name}: {p:+.2f} [{lo:+.2f}, {hi:+.2f}] ({reading(lo, hi)})")
    held = [lr for lr in sorted(results) if premises[lr][0] and results[lr]["models"]]
    if not held:
        print("claim (b): not judged (the premise holds at no learning rate)")
        return
    deciding = max(held)
    note = "" if deciding == max(results) else f" (the largest, {max(results)}, fails the premise)"
    print(f"claim (b) at lr {deciding}, the largest learning rate where the premise holds{note}: "
          f"{decide(results[deciding])}")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
