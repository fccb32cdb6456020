"""The statistics behind the studies' decision rules (each study's ``verdict.py`` imports this file).

A study's unit of analysis is a model (or a learning rate), not a run: the runs of a unit differ only in their
seed, and a unit's value is the mean over its runs. Intervals come from a hierarchical percentile bootstrap:
draw the units with replacement, then each drawn unit's runs with replacement, average, and recompute the
statistic; a paired comparison (one measure against another) takes both from the same resample.

numpy, scipy and pandas only, so that a verdict is reproducible from the shipped tables without sane-run. The
report's intervals (sane_cli.statistics) are drawn the same way; this copy stays as the registered rules used it,
whatever the report's code becomes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata

BOOTSTRAP = 2000  # resamples behind every interval
LEVEL = 95  # per cent: the intervals' coverage


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    return rankdata(x, axis=-1)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho between x and y along the last axis (any leading axes are resamples); NaN where one is
    constant.

    >>> float(spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])))
    0.8
    """
    rx, ry = ranks(x), ranks(y)
    return _pearson(rx, ry)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Spearman's rho between x and y with z held fixed: the Pearson correlation of the ranks of x and of y
    after each is regressed (least squares, with an intercept) on the ranks of the columns of z.

    x, y: (..., n); z: (..., n, q). A z that is constant adds nothing (its ranks are constant).

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=200)
    >>> x, y = z + 0.1 * rng.normal(size=200), z + 0.1 * rng.normal(size=200)
    >>> bool(spearman(x, y) > 0.9), bool(abs(partial_spearman(x, y, z[:, None])) < 0.2)
    (True, True)
    """
    rx, ry = ranks(x), ranks(y)
    rz = np.moveaxis(ranks(np.moveaxis(z, -2, -1)), -1, -2)  # each column of z ranked over the n units
    design = np.concatenate([np.ones((*rz.shape[:-1], 1)), rz], axis=-1)
    pinv = np.linalg.pinv(design)  # (..., q + 1, n)
    resid = [r - (design @ (pinv @ r[..., None]))[..., 0] for r in (rx, ry)]
    return _pearson(*resid)


def unit_arrays(runs: pd.DataFrame, unit: str, columns: list[str]) -> tuple[list, np.ndarray, np.ndarray]:
    """The units (in order of first appearance), the values of ``columns`` as (units, most runs, columns)
    padded with NaN, and each unit's number of runs."""
    if runs.empty:
        return [], np.full((0, 0, len(columns)), np.nan), np.zeros(0, dtype=int)
    names = list(dict.fromkeys(runs[unit]))
    counts = np.array([(runs[unit] == u).sum() for u in names])
    values = np.full((len(names), counts.max(), len(columns)), np.nan)
    for i, u in enumerate(names):
        values[i, : counts[i]] = runs.loc[runs[unit] == u, columns].to_numpy(float)
    return names, values, counts


def unit_means(values: np.ndarray) -> np.ndarray:
    """(units, columns): each unit's mean over its runs."""
    return np.nanmean(values, axis=1)


def hierarchical_resamples(values: np.ndarray, counts: np.ndarray, seed: int, n: int = BOOTSTRAP) -> np.ndarray:
    """(n, units, columns): unit means of ``n`` hierarchical resamples (units with replacement, then each drawn
    unit's runs with replacement, as many as it has). A unit of one run contributes that run."""
    rng = np.random.default_rng(seed)
    units, most, _ = values.shape
    drawn = rng.integers(0, units, size=(n, units))
    c = counts[drawn]  # (n, units) runs of each drawn unit
    runs = (rng.random((n, units, most)) * c[..., None]).astype(int)  # a run of the drawn unit, uniformly
    used = np.arange(most) < c[..., None]  # its first c draws count
    picked = values[drawn[..., None], runs]  # (n, units, most, columns)
    return np.where(used[..., None], picked, 0.0).sum(2) / c[..., None]


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The central ``LEVEL`` % percentile interval of bootstrap samples (NaNs dropped)."""
    s = samples[np.isfinite(samples)]
    if not len(s):
        return np.nan, np.nan
    lo, hi = np.percentile(s, [(100 - LEVEL) / 2, 100 - (100 - LEVEL) / 2])
    return float(lo), float(hi)


def parts(folder, pattern: str) -> pd.DataFrame:
    """The study's parts (one table a part, e.g. a seed) matching ``pattern`` in ``folder``, as one table; exits
    with one line when there is none, or when a part cannot be read, holds no rows or has other columns than the
    rest (a cut or overwritten file), so that no verdict is read off fewer parts than are shipped."""
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"verdict.py: no {pattern} in {folder}; run run.sh first")
    fix = "restore it (git checkout -- <file>) or rerun its part"
    tables = {}
    for path in found:
        if path.suffix == ".csv" and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            raise SystemExit(f"verdict.py: {path} ends mid-line (a cut file); {fix}")
        try:
            tables[path] = pd.read_csv(path)
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:  # pandas' parser and empty-file errors too
            raise SystemExit(f"verdict.py: {path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
    columns = pd.Series([tuple(t.columns) for t in tables.values()]).mode()[0]  # the parts' usual columns
    for path, table in tables.items():
        if tuple(table.columns) != columns or table.empty:
            what = "holds no rows" if tuple(table.columns) == columns else f"has columns {list(table.columns)[:4]}..."
            raise SystemExit(f"verdict.py: {path} {what}, not a part of this study ({len(columns)} columns); {fix}")
    return pd.concat(tables.values(), ignore_index=True)


def completed(runs: pd.DataFrame, describe) -> pd.DataFrame:
    """The completed runs; the others are named in one line (``describe(row)`` names a run) and left out."""
    ended = runs[runs.status != "completed"]
    if len(ended):
        names = "; ".join(f"{describe(r)}: {r.status}" for r in ended.itertuples())
        print(f"left out ({len(ended)} runs not completed): {names}")
    return runs[runs.status == "completed"]


def combine(verdicts) -> str:
    """A claim's verdict from its parts' (families', effects'): reproduced if every part is, refuted if one is and
    none is reproduced, undecided otherwise.

    >>> combine(["reproduced", "reproduced"]), combine(["refuted", "undecided"]), combine(["reproduced", "refuted"])
    ('reproduced', 'refuted', 'undecided')
    """
    values = set(verdicts)
    if values == {"reproduced"}:
        return "reproduced"
    return "refuted" if "refuted" in values and "reproduced" not in values else "undecided"


def reading(lo: float, hi: float) -> str:
    """Where an interval lies against 0: ``above 0``, ``below 0``, ``spans 0``, or ``tie at 0`` when an end is
    exactly 0 (stated as a tie, never rounded to a side).

    >>> reading(0.1, 0.5), reading(-0.5, -0.1), reading(-0.1, 0.2), reading(0.0, 0.4)
    ('above 0', 'below 0', 'spans 0', 'tie at 0')
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undefined"
    if lo == 0 or hi == 0:
        return "tie at 0"
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "spans 0"


def estimate(
    runs: pd.DataFrame, unit: str, columns: list[str], statistic: Callable[[np.ndarray], np.ndarray], *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic of the unit means and its hierarchical bootstrap intervals.

    ``statistic`` maps unit means (..., units, columns) to a vector of statistics (..., k); it is applied to the
    data and to every resample at once. Returns (point estimates (k,), lower ends (k,), upper ends (k,)).
    Runs with an empty value in ``columns`` are left out first, and said so (a resample that drew one would
    otherwise be NaN and dropped, silently conditioning the interval).
    """
    empty = runs[columns].isna().any(axis=1)
    if empty.any():
        print(f"  (left out: {int(empty.sum())} runs with an empty value among {', '.join(columns)})")
        runs = runs[~empty]
    _, values, counts = unit_arrays(runs, unit, columns)
    point = statistic(unit_means(values))
    boot = statistic(hierarchical_resamples(values, counts, seed))
    bounds = np.array([interval(boot[:, j]) for j in range(boot.shape[-1])])
    return np.asarray(point, float), bounds[:, 0], bounds[:, 1]
