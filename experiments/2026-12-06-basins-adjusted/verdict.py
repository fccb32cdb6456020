"""The decision rule of this study (README.md) applied to the pairs*.csv.gz tables beside this file.

Usage: python verdict.py [folder holding pairs*.csv.gz]   (default: this file's folder)
Each pairs-<part>.csv.gz is one part of the study (pairs.py over that part's runs); the parts are combined here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decide import BOOTSTRAP, combine, interval, parts  # noqa: E402

TRANSIENT = 100  # steps: pairs starting earlier are left out (lambda_max rises several-fold there in every run)
FLATTENING = -0.05  # log scale: a spike must flatten at least 5 % beyond its null to count
TURN = 0.02  # similarity: a spike must turn the top-10 subspace at least this much beyond its null
K = 10  # the subspace of the headline's turn


def load(folder: Path) -> pd.DataFrame:
    return parts(folder, "pairs*.csv.gz")


def usable(pairs: pd.DataFrame) -> pd.DataFrame:
    """After the transient, not starting inside a spike, with finite values."""
    ok = (pairs.a >= TRANSIENT) & ~pairs.inside_spike.astype(bool) & np.isfinite(pairs.ratio_a) & (pairs.ratio_a > 0)
    return pairs[ok & np.isfinite(pairs.log_flattening)]


def adjusted(run: pd.DataFrame, *, k: int = K, gap: int = 10, spike_kind: str = "spike", upper: bool = False) -> dict:
    """One run's excess flattening and turn: each spike pair against the run's own null regression (least squares
    of log flattening, and of similarity, on log sharpness ratio over its null pairs ``gap`` apart), read at the
    spike's own ratio; the run's value is the median over its spikes."""
    sim = f"similarity_k{k}"
    null = run[(run.kind == "quiet") & (run.gap == gap)]
    if upper:  # the fit on the sharper half of the quiet pairs only: nearer the spikes' ratios
        null = null[null.ratio_a >= null.ratio_a.median()]
    spikes = run[(run.kind == spike_kind) & (run.gap == gap)]
    if len(null) < 3 or spikes.empty:
        return {"spikes": len(spikes), "flattening": np.nan, "turn": np.nan}
    x = np.log(null.ratio_a.to_numpy())
    design = np.column_stack([np.ones_like(x), x])
    fit_flat = np.linalg.lstsq(design, null.log_flattening.to_numpy(), rcond=None)[0]
    fit_sim = np.linalg.lstsq(design, null[sim].to_numpy(), rcond=None)[0]
    xs = np.column_stack([np.ones(len(spikes)), np.log(spikes.ratio_a.to_numpy())])
    flat = spikes.log_flattening.to_numpy() - xs @ fit_flat
    turn = xs @ fit_sim - spikes[sim].to_numpy()
    return {"spikes": len(spikes), "flattening": float(np.median(flat)), "turn": float(np.median(turn))}


def matched(run: pd.DataFrame, width: float) -> dict:
    """The earlier study's null, for the sensitivity table: each spike against the mean of the null pairs whose
    ratio lies within a factor (1 + width) of its own."""
    null, spikes = run[(run.kind == "quiet") & (run.gap == 10)], run[(run.kind == "spike") & (run.gap == 10)]
    flat, turn = [], []
    for s in spikes.itertuples():
        near = null[np.abs(np.log(null.ratio_a / s.ratio_a)) <= np.log1p(width)]
        if len(near):
            flat.append(s.log_flattening - np.log(np.exp(near.log_flattening).mean()))
            turn.append(near[f"similarity_k{K}"].mean() - getattr(s, f"similarity_k{K}"))
    return {"spikes": len(flat), "flattening": float(np.median(flat)) if flat else np.nan,
            "turn": float(np.median(turn)) if turn else np.nan}  # fmt: skip


def over_runs(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean over runs and its 95 % percentile bootstrap interval (runs resampled)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(0, len(v), size=(BOOTSTRAP, len(v)))].mean(1)
    return float(v.mean()), *interval(boot)


def judge(lo: float, hi: float, threshold: float, sign: int) -> str:
    """reproduced when the interval lies beyond the threshold in the claim's direction (sign -1: below it), refuted
    when it lies on the other side, a tie when an end is exactly at it, undecided otherwise."""
    if lo == threshold or hi == threshold:
        return "tie at the threshold"
    beyond = hi < threshold if sign < 0 else lo > threshold
    short = lo > threshold if sign < 0 else hi < threshold
    return "reproduced" if beyond else "refuted" if short else "undecided"


def table(pairs: pd.DataFrame, by_run, label: str) -> tuple[dict, dict]:
    rows = {run: by_run(sub) for run, sub in pairs.groupby("run", sort=True)}
    frame = pd.DataFrame(rows).T
    counted = frame[np.isfinite(frame.flattening.astype(float))]
    flat = over_runs(counted.flattening.to_numpy(float))
    turn = over_runs(counted.turn.to_numpy(float))
    print(f"{label}: {len(counted)} runs ({len(frame) - len(counted)} without a usable spike), "
          f"{int(counted.spikes.sum())} spikes; excess flattening {flat[0]:+.3f} [{flat[1]:+.3f}, {flat[2]:+.3f}], "
          f"excess turn {turn[0]:+.3f} [{turn[1]:+.3f}, {turn[2]:+.3f}]")  # fmt: skip
    return flat, turn


def main(folder: Path) -> None:
    pairs = usable(load(folder))
    print(
        f"{pairs.run.nunique()} runs; lr {sorted(pairs.lr.unique())}; {int((pairs.kind == 'spike').sum())} spike "
        f"pairs and {int(((pairs.kind == 'quiet') & (pairs.gap == 10)).sum())} null pairs after step {TRANSIENT}"
    )
    flat, turn = table(pairs, adjusted, "headline (regression-adjusted null, k 10, gap 10)")
    f_verdict = judge(flat[1], flat[2], FLATTENING, -1)
    t_verdict = judge(turn[1], turn[2], TURN, +1)
    beyond = []
    for _, run in pairs.groupby("run"):
        quiet = run[(run.kind == "quiet") & (run.gap == 10)].ratio_a
        spikes = run[(run.kind == "spike") & (run.gap == 10)].ratio_a
        if len(quiet) and len(spikes):
            beyond.append((spikes > quiet.quantile(0.95)).to_numpy())
    share = float(np.concatenate(beyond).mean()) if beyond else np.nan
    print(
        f"spikes whose ratio lies above their run's 95th percentile of quiet pairs (the fit extrapolated): {share:.0%}"
    )
    print("sensitivity (deciding nothing):")
    table(pairs, lambda r: adjusted(r, upper=True), "  adjusted, fitted on the sharper half of the quiet pairs")
    for width in (0.05, 0.10, 0.20):
        table(pairs, lambda r, w=width: matched(r, w), f"  matched null within {width:.0%}")
    for k in (1, 5):
        table(pairs, lambda r, k=k: adjusted(r, k=k), f"  adjusted, k {k}")
    table(pairs, lambda r: adjusted(r, gap=20, spike_kind="cross"), "  adjusted, scheduled pairs 20 steps apart")
    for lr, sub in pairs.groupby("lr", sort=True):
        table(sub, adjusted, f"  adjusted, lr {lr} alone")
    print(f"flattening (interval below {FLATTENING}): {f_verdict}; shift (interval above {TURN}): {t_verdict}")
    print(f"claim (c): {combine([f_verdict, t_verdict])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
