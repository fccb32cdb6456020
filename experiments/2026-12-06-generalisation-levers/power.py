"""The power of this study's rule (verdict.py), by simulation: synthetic runs tables of the study's shape (36
units = 3 sizes x 4 training-set sizes x 3 label-noise levels, 3 seeds each) put through the very rule.

Usage: python power.py [simulations]   (default 200; about a second each on one core)

A unit's test error and measure are drawn as standard normals linked to the size lever as the pilot saw it:
test error falls with size (-0.5) while the measure, which counts parameters, rises with it (+0.5); with the
size held fixed they correlate at ``partial``. Each run adds seed noise of 0.3 x the spread between units (seed
std / unit std about what the 2026-11-29 studies saw). The rule reads the partial rho (size held fixed): "tracks"
if its interval lies above 0, "runs against" if below. Printed: how often each, for partial = 0 (no effect: the
false positive rates), 0.3 and 0.5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import family_verdict  # noqa: E402

SEEDS, SEED_NOISE, ERROR_LINK, MEASURE_LINK = 3, 0.3, -0.5, 0.5


def simulated(rng: np.random.Generator, partial: float) -> pd.DataFrame:
    sizes, n_trains, noises = [1, 2, 3], [500, 1000, 2000, 4000], [0.0, 0.2, 0.4]
    grid = [(s, n, q) for s in sizes for n in n_trains for q in noises]
    p = np.array([s for s, _, _ in grid], float)
    p = (p - p.mean()) / p.std()
    a, b = rng.normal(size=len(grid)), rng.normal(size=len(grid))
    resid_e = a
    resid_m = partial * a + np.sqrt(1 - partial**2) * b
    err = ERROR_LINK * p + np.sqrt(1 - ERROR_LINK**2) * resid_e
    meas = MEASURE_LINK * p + np.sqrt(1 - MEASURE_LINK**2) * resid_m
    rows = []
    for u, (s, n, q) in enumerate(grid):
        for seed in range(SEEDS):
            e, m = err[u] + SEED_NOISE * rng.normal(), meas[u] + SEED_NOISE * rng.normal()
            rows.append(dict(unit=f"{s} {n} {q}", size=s, n_train=n, seed=seed, test_error=e, n_eff=m,
                             sane=rng.normal(), n_eff_fixed_prior=np.nan, log_params=np.log(1000 * s),
                             trace=rng.normal(), lambda_max=rng.normal(), weight_norm_sq=rng.normal(),
                             train_loss=rng.normal(), epochs=800000 / n, steps_done=8000))  # fmt: skip
    return pd.DataFrame(rows)


def main(simulations: int) -> None:
    rng = np.random.default_rng(20261206)
    print(f"{simulations} simulations a row; 36 units x {SEEDS} seeds; rule: the partial rho (size fixed)")
    for partial in (0.0, 0.3, 0.5):
        reads = [family_verdict(simulated(rng, partial), seed=i, quiet=True)["readings"]["n_eff"]
                 for i in range(simulations)]  # fmt: skip
        tracks, against = np.mean([r == "tracks" for r in reads]), np.mean([r == "runs against" for r in reads])
        print(f"partial rho {partial}: tracks {tracks:.2f}, runs against {against:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
