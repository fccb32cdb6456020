"""The studies' statistics (experiments/decide.py) against closed forms and independent computations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import decide  # noqa: E402


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)
    assert float(decide.spearman(x, y)) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_partial_spearman_is_the_closed_form_on_ranks():
    """One control: (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) on the ranks."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), -z + rng.normal(size=40)
    r = np.corrcoef([rankdata(x), rankdata(y), rankdata(z)])
    closed = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert float(decide.partial_spearman(x, y, z[:, None])) == pytest.approx(closed, abs=1e-12)
    # batched over resamples as the bootstrap calls it
    both = decide.partial_spearman(np.stack([x, x]), np.stack([y, y]), np.stack([z, z])[..., None])
    assert both == pytest.approx([closed, closed], abs=1e-12)


def test_hierarchical_resamples_draw_units_then_their_runs():
    runs = pd.DataFrame({"unit": ["a", "a", "a", "b", "c", "c"], "v": [1.0, 2.0, 3.0, 10.0, 20.0, 22.0]})
    names, values, counts = decide.unit_arrays(runs, "unit", ["v"])
    assert names == ["a", "b", "c"] and counts.tolist() == [3, 1, 2]
    assert decide.unit_means(values)[:, 0].tolist() == [2.0, 10.0, 21.0]
    boot = decide.hierarchical_resamples(values, counts, seed=0, n=4000)[..., 0]
    assert boot.shape == (4000, 3)
    # every resampled unit mean is a mean of its own unit's runs: b's is always 10, c's within [20, 22]
    b_or_c = boot[(boot >= 10) & (boot <= 22)]
    assert set(np.unique(boot[(boot > 3) & (boot < 20)])) == {10.0}
    assert b_or_c.size > 0 and boot.min() >= 1 and boot.max() <= 22
    # a's draws of 3 runs with replacement average 2 over many resamples
    a_means = boot[boot <= 3]
    assert a_means.mean() == pytest.approx(2.0, abs=0.05)


def test_estimate_covers_a_strong_correlation_and_reads_its_side():
    rng = np.random.default_rng(3)
    g = rng.normal(size=30)
    runs = pd.DataFrame([{"unit": u, "x": g[u] + 0.1 * rng.normal(), "y": g[u] + 0.1 * rng.normal()}
                         for u in range(30) for _ in range(3)])  # fmt: skip
    point, lo, hi = decide.estimate(
        runs, "unit", ["x", "y"], lambda m: decide.spearman(m[..., 0], m[..., 1])[..., None]
    )
    assert lo[0] < point[0] < hi[0] and decide.reading(lo[0], hi[0]) == "above 0"
    runs["y"] = -runs.y
    point, lo, hi = decide.estimate(
        runs, "unit", ["x", "y"], lambda m: decide.spearman(m[..., 0], m[..., 1])[..., None]
    )
    assert decide.reading(lo[0], hi[0]) == "below 0"


def test_estimate_leaves_out_runs_with_empty_values_and_says_so(capsys):
    rng = np.random.default_rng(4)
    g = rng.normal(size=20)
    runs = pd.DataFrame([{"unit": u, "x": g[u] + 0.1 * rng.normal(), "y": g[u]} for u in range(20) for _ in range(3)])
    runs.loc[[0, 5], "x"] = np.nan  # two runs of units 0 and 1 lost their curvature

    def rho(m):
        return decide.spearman(m[..., 0], m[..., 1])[..., None]

    point, lo, hi = decide.estimate(runs, "unit", ["x", "y"], rho)
    assert "left out: 2 runs" in capsys.readouterr().out
    clean = runs.dropna()
    expected, lo2, hi2 = decide.estimate(clean, "unit", ["x", "y"], rho)
    assert point[0] == expected[0] and (lo[0], hi[0]) == (lo2[0], hi2[0])  # the same as leaving them out by hand
    assert np.isfinite([lo[0], hi[0]]).all()
