"""The power of this study's rule (verdict.py, the rank agreement of an approximation with its reference), by
simulation: 3 depths x 3 nets (or as many as given) x 4 checkpoints; a state's reference value is a depth effect
(2 apart from one depth to the next: depths differ more than nets), a net effect (sd 1) and a checkpoint effect
(sd 0.5); the approximation adds an independent error whose size sets the true rank agreement within a depth;
the rule's within-depth rho, stratified cluster bootstrap (nets resampled within each depth) and threshold 0.8
applied to one measure.

Usage: python power.py [simulations] [nets a depth]   (defaults 100, 3)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import AGREE, agreement  # noqa: E402


def simulated(rng, error: float, seeds: int = 3) -> pd.DataFrame:
    rows = []
    for d, depth in enumerate((8, 12, 16)):
        for seed in range(seeds):
            net = 2.0 * d + rng.normal()
            for step in (2000, 4000, 6000, 8000):
                ref = net + 0.5 * rng.normal()
                for method, value in (("ref", ref), ("approx", ref + error * rng.normal())):
                    rows.append(dict(depth=depth, width=24, seed=seed, step=step, method=method, n_eff=value))
    return pd.DataFrame(rows)


def main(simulations: int, seeds: int) -> None:
    rng = np.random.default_rng(20261206)
    for error in (0.1, 0.2, 0.35, 0.6, 1.2):
        out, rhos = [], []
        for i in range(simulations):
            p, lo, hi, _ = agreement(simulated(rng, error, seeds), "approx", "ref", "n_eff", seed=i)
            rhos.append(p)
            out.append("serves" if lo > AGREE else "fails" if hi < AGREE else "undecided")
        serves, fails = np.mean([o == "serves" for o in out]), np.mean([o == "fails" for o in out])
        print(f"error sd {error} (rho about {np.median(rhos):.2f}): serves {serves:.2f}, fails {fails:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
