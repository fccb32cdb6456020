"""The power of this study's rule (verdict.py), by simulation: each run's median excess drawn from a normal whose
spread across runs is the earlier study's (`../2026-11-29-basins-matched/spikes_per_run.csv`: 0.036 to 0.083 for
the flattening, 0.042 to 0.053 for the turn; the larger is used), over the full scale's 40 runs (the default
scale's 4 beside), put through the rule's mean-over-runs interval and thresholds.

Usage: python power.py [simulations]   (default 2000)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import FLATTENING, TURN, judge, over_runs  # noqa: E402

SPREAD = {"flattening": 0.083, "turn": 0.053}


def main(simulations: int) -> None:
    rng = np.random.default_rng(20261206)
    for runs in (40, 4):
        for effect, threshold, sign, means in (("flattening", FLATTENING, -1, (0.0, -0.05, -0.07, -0.10, -0.15)),
                                               ("turn", TURN, +1, (0.0, 0.02, 0.03, 0.05))):  # fmt: skip
            for mu in means:
                out = [judge(*over_runs(rng.normal(mu, SPREAD[effect], runs), seed=i)[1:], threshold, sign)
                       for i in range(simulations)]  # fmt: skip
                print(f"{runs} runs, {effect} {mu:+.2f}: reproduced {np.mean([o == 'reproduced' for o in out]):.2f}, "
                      f"refuted {np.mean([o == 'refuted' for o in out]):.2f}")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
