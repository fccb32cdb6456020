"""The report's statistics: rank correlations between each curvature measure and generalisation across units
(seeds of one model averaged) with hierarchical bootstrap intervals (:func:`correlations`), and run-level
inference on what loss spikes do beyond their null (:func:`spike_inference`). Imports neither torch nor
matplotlib.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .records import FINISHED
from .tables import MEASURES, TARGETS, units

BOOTSTRAP = 2000  # resamples of the units behind each correlation's confidence interval

FEW_UNITS = 8  # a correlation over fewer units is marked (few_units) and read with care

FAMILY = "model"  # the key whose values are families: correlations are also given within each (CNNs, MLPs)


def correlations(
    table: pd.DataFrame, measures=MEASURES, targets=TARGETS, *, seed: int = 0, unit: pd.Series | None = None
) -> pd.DataFrame:
    """Rank correlations between each measure and each target (test loss, test accuracy, generalisation gap)
    across units, not runs: seeds of one model are averaged (:func:`units`), so that a model run with more
    seeds does not count more. Kendall tau-b and Spearman rho of the unit means, their p-values, and 95 %
    intervals from a hierarchical percentile bootstrap (``BOOTSTRAP`` resamples, seeded by ``seed``: the units
    with replacement, then each drawn unit's seeds with replacement, averaged). Over the finished runs where both
    values are finite; NaN with fewer than 3 units. Given for every ``scope``: ``all`` the units, and where the
    runs hold more than one family (``FAMILY``), each family alone (``model=cnn``, ``model=mlp``): a
    correlation across families is mostly the gap between them. ``seeds_min``/``seeds_max`` count the runs per
    unit; ``few_units`` marks correlations over fewer than ``FEW_UNITS`` units. ``unit`` gives each row's unit
    where ``table`` holds columns beside the summary's that :func:`units` would take for config keys."""
    from scipy.stats import kendalltau, spearmanr

    done = table[table.status.isin(FINISHED)]
    unit = units(table) if unit is None else unit
    scopes = [("all", done)]
    if FAMILY in done and done[FAMILY].astype(str).nunique() > 1:
        scopes += [(f"{FAMILY}={f}", sub) for f, sub in done.groupby(done[FAMILY].astype(str), sort=True)]
    stats = ("kendall_tau", "kendall_lo", "kendall_hi", "kendall_p", "spearman_rho", "spearman_lo", "spearman_hi",
             "spearman_p")  # fmt: skip
    rows = []
    for scope, sub in scopes:
        for m, t in ((m, t) for m in measures for t in targets):
            x, y = pd.to_numeric(sub[m], errors="coerce"), pd.to_numeric(sub[t], errors="coerce")
            ok = np.isfinite(x) & np.isfinite(y)
            xs, ys, counts = _per_unit(x[ok], y[ok], unit[ok.index[ok]])
            row = {"scope": scope, "measure": m, "target": t, "n_units": len(counts), "n_runs": int(counts.sum()),
                   "seeds_min": int(counts.min()) if len(counts) else 0,
                   "seeds_max": int(counts.max()) if len(counts) else 0,
                   "few_units": bool(len(counts) < FEW_UNITS), **dict.fromkeys(stats, np.nan)}  # fmt: skip
            xm, ym = np.nanmean(xs, axis=1) if len(xs) else xs, np.nanmean(ys, axis=1) if len(ys) else ys
            if len(counts) >= 3 and len(np.unique(xm)) > 1 and len(np.unique(ym)) > 1:
                tau, tau_p = kendalltau(xm, ym)
                rho, rho_p = spearmanr(xm, ym)
                taus, rhos = bootstrap_rank_correlations(*hierarchical_resamples(xs, ys, counts, seed))
                (tau_lo, tau_hi), (rho_lo, rho_hi) = (np.nanpercentile(v, [2.5, 97.5]) for v in (taus, rhos))
                row.update(kendall_tau=tau, kendall_lo=tau_lo, kendall_hi=tau_hi, kendall_p=tau_p, spearman_rho=rho,
                           spearman_lo=rho_lo, spearman_hi=rho_hi, spearman_p=rho_p)  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def _per_unit(x: pd.Series, y: pd.Series, unit: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y as (units, most seeds) arrays padded with NaN, in the order of the units' first runs, and the
    number of runs of each unit."""
    order = list(dict.fromkeys(unit))
    counts = np.array([(unit == u).sum() for u in order], dtype=int)
    xs, ys = (np.full((len(order), counts.max() if len(order) else 0), np.nan) for _ in range(2))
    for i, u in enumerate(order):
        xs[i, : counts[i]], ys[i, : counts[i]] = x[unit == u].to_numpy(float), y[unit == u].to_numpy(float)
    return xs, ys, counts


def hierarchical_resamples(xs, ys, counts, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``BOOTSTRAP`` resamples of the unit means, (BOOTSTRAP, units) each: draw the units with replacement, then
    each drawn unit's runs with replacement (as many as it has), and average them."""
    rng = np.random.default_rng(seed)
    n, most = xs.shape
    drawn = rng.integers(0, n, size=(BOOTSTRAP, n))
    c = counts[drawn][..., None]  # (B, n, 1) runs of each drawn unit
    runs = (rng.random((BOOTSTRAP, n, most)) * c).astype(int)  # (B, n, most) a run of the unit, uniformly
    used = np.arange(most) < c  # the first c draws of each unit
    means = [np.where(used, v[drawn[..., None], runs], 0.0).sum(-1) / c[..., 0] for v in (xs, ys)]
    return means[0], means[1]


def bootstrap_rank_correlations(x: np.ndarray, y: np.ndarray, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b and Spearman rho of each row of x and y (resamples, n), vectorised: tau-b as
    sum s_x s_y / sqrt(sum s_x^2 sum s_y^2) over the pairs' signs s = sign(v_i - v_j) (ties count 0 in the
    numerator and drop out of the denominator, which is tau-b), rho as the Pearson correlation of average
    ranks. NaN for a row in which x or y is constant."""
    from scipy.stats import rankdata

    taus = np.empty(len(x))
    for a in range(0, len(x), chunk):  # (chunk, n, n) signs at a time
        sx = np.sign(x[a : a + chunk, :, None] - x[a : a + chunk, None, :])
        sy = np.sign(y[a : a + chunk, :, None] - y[a : a + chunk, None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            taus[a : a + chunk] = (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    return taus, rhos


# per spike, what it does beyond its matched null (and beyond the unmatched one): the formula of each, over
# basins.csv's columns
SPIKE_EFFECTS = {
    "excess_flattening": "log(flattening) - log(matched_flattening)",  # < 0: flattens more than the null
    "excess_turn": "matched_similarity - similarity",  # > 0: the top eigenvectors turn more than the null's
    "excess_distance": "spectrum_distance - matched_distance",  # > 0: the spectrum moves more than the null's
    "excess_flattening_unmatched": "log(flattening) - log(null_flattening)",
    "excess_turn_unmatched": "null_similarity - similarity",
    "excess_flattening_adjusted": "log(flattening) - log(adjusted_flattening)",  # the null by regression
    "excess_turn_adjusted": "adjusted_similarity - similarity",
}

_TERM = re.compile(r"(log\()?([a-z_]+)\)?")


def spike_effects(basins: pd.DataFrame) -> pd.DataFrame:
    """One row per spike with a checkpoint pair across it (``basins.csv``'s rows with a similarity): run,
    spike_step and each of ``SPIKE_EFFECTS`` (NaN where its null has no pairs, or the column is missing)."""
    similarity = pd.to_numeric(basins["similarity"], errors="coerce") if "similarity" in basins else None
    spikes = basins[similarity.notna()] if similarity is not None else basins.iloc[0:0]
    out = pd.DataFrame({"run": spikes.get("run"), "spike_step": spikes.get("spike_step")}).reset_index(drop=True)

    def term(text: str) -> np.ndarray:
        log, name = _TERM.fullmatch(text.strip()).groups()
        values = pd.to_numeric(spikes[name], errors="coerce") if name in spikes else pd.Series(np.nan, spikes.index)
        values = values.to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values) if log else values

    for name, formula in SPIKE_EFFECTS.items():
        left, right = formula.split(" - ")
        out[name] = term(left) - term(right)
    return out


def spike_inference(basins: pd.DataFrame, table: pd.DataFrame, *, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run-level inference on what spikes do beyond their null: the spikes of one run are not independent, so
    each run counts once, by its median over its spikes of each of ``SPIKE_EFFECTS``; then per scope (``all``
    runs, and each unit of :func:`units` where there are several) the mean over runs of those medians with a
    95 % percentile bootstrap interval over runs (``BOOTSTRAP`` resamples, seeded by ``seed``), the number of
    runs and spikes behind it and the share of runs whose median is above 0. Finished runs only.

    Returns (one row per run: run, unit, n_spikes and each effect's median; one row per scope and effect)."""
    effects = spike_effects(basins)
    unit_of = dict(zip(table.label, units(table), strict=True))
    table = table[table.status.isin(FINISHED)]  # a run still going (or stopped) has not all its spikes
    per_run = []
    for label in table.label:
        mine = effects[effects.run == label]
        row = {"run": label, "unit": unit_of[label], "n_spikes": len(mine)}
        for name in SPIKE_EFFECTS:
            values = mine[name].dropna()
            row[f"{name}_spikes"] = len(values)
            row[name] = float(values.median()) if len(values) else np.nan
        per_run.append(row)
    columns = ["run", "unit", "n_spikes", *(c for name in SPIKE_EFFECTS for c in (f"{name}_spikes", name))]
    per_run = pd.DataFrame(per_run, columns=columns)  # columns also without a finished run
    scopes = [("all", per_run)]
    if per_run.unit.nunique() > 1:
        scopes += list(per_run.groupby("unit", sort=False))
    rows = []
    for scope, sub in scopes:
        for name in SPIKE_EFFECTS:
            values = sub[name].dropna().to_numpy(float)
            row = {"scope": scope, "effect": name, "formula": SPIKE_EFFECTS[name], "n_runs": len(values),
                   "n_spikes": int(sub.loc[sub[name].notna(), f"{name}_spikes"].sum()), "mean": np.nan,
                   "lo": np.nan, "hi": np.nan, "share_positive": np.nan}  # fmt: skip
            if len(values):
                means = values[np.random.default_rng(seed).integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
                lo, hi = np.percentile(means, [2.5, 97.5])
                row.update(mean=values.mean(), lo=lo, hi=hi, share_positive=float((values > 0).mean()))
            rows.append(row)
    return per_run, pd.DataFrame(rows)
