"""The power of this study's rule (verdict.py) at the deciding learning rate, by simulation: 24 models (or as
many as given) x 3 seeds, a model's test error and its two measures drawn as standard normals with the measures
correlated with test error at rho_sane and rho_n_eff (and with each other only through it), seed noise 0.3 x the
spread between models, put through the very rule (SANE's rho above 0 and SANE's minus N_eff's above 0).

Usage: python power.py [simulations] [models]   (defaults 200, 24)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import at_lr, decide  # noqa: E402

SEEDS, SEED_NOISE = 3, 0.3


def simulated(rng: np.random.Generator, rho_sane: float, rho_neff: float, models: int = 24) -> pd.DataFrame:
    e = rng.normal(size=models)
    s = rho_sane * e + np.sqrt(1 - rho_sane**2) * rng.normal(size=models)
    n = rho_neff * e + np.sqrt(1 - rho_neff**2) * rng.normal(size=models)
    rows = [dict(unit=str(u), seed=i, label_noise=u % 6, test_error=e[u] + SEED_NOISE * rng.normal(),
                 sane_late=s[u] + SEED_NOISE * rng.normal(), n_eff_late=n[u] + SEED_NOISE * rng.normal(),
                 lambda_max_late=rng.normal(), trace_late=rng.normal())
            for u in range(models) for i in range(SEEDS)]  # fmt: skip
    return pd.DataFrame(rows)


def main(simulations: int, models: int) -> None:
    rng = np.random.default_rng(20261206)
    print(f"{simulations} simulations a row; {models} models x {SEEDS} seeds")
    for rs, rn in ((0.0, 0.0), (0.5, 0.5), (0.7, 0.0), (0.8, 0.2), (0.7, 0.3), (0.0, 0.7)):
        out = [decide(at_lr(simulated(rng, rs, rn, models), seed=i)) for i in range(simulations)]
        print(f"rho SANE {rs}, rho N_eff {rn}: reproduced {np.mean([o == 'reproduced' for o in out]):.2f}, "
              f"refuted {np.mean([o == 'refuted' for o in out]):.2f}")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, int(sys.argv[2]) if len(sys.argv) > 2 else 24)
