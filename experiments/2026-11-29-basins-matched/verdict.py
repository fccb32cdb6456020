"""The decision rule of this study (README.md) applied to the spikes.csv beside this file (the default scale,
2,400 steps), or to the one in the folder given (`python verdict.py steps-3000`: the first run)."""

import sys
from pathlib import Path

import pandas as pd

folder = Path(__file__).parent / (sys.argv[1] if len(sys.argv) > 1 else "")
spikes = pd.read_csv(folder / "spikes.csv").set_index(["scope", "effect"])
for (scope, effect), r in spikes.iterrows():
    print(f"{scope:5} {effect:28}: mean of run medians {r['mean']:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] over "
          f"{r.n_runs} runs ({r.n_spikes} spikes); runs above 0: {r.share_positive:.0%}")  # fmt: skip


def verdict(effect: str, sign: int, margin: float) -> str:
    """sign -1: the claim predicts an interval below 0 (flattening), +1: above 0 (turn)."""
    r = spikes.loc[("all", effect)]
    lo, hi = sign * r.lo, sign * r.hi
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0 and not hi <= margin:
        return "reproduced"
    if hi < 0 or (r.lo >= -margin and r.hi <= margin):
        return "refuted"
    return "undecided"


flattening, shift = verdict("excess_flattening", -1, 0.05), verdict("excess_turn", +1, 0.02)
print(f"flattening: {flattening}; shift: {shift}; distance (not deciding): {verdict('excess_distance', +1, 0)}")
claim = (
    "reproduced"
    if flattening == shift == "reproduced"
    else ("refuted" if "refuted" in (flattening, shift) and "reproduced" not in (flattening, shift) else "undecided")
)
print(f"claim (c): {claim}")
