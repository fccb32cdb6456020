"""The decision rule of this study (README.md) applied to the checkpoints*.csv and cost.csv tables beside this file.

Usage: python verdict.py [folder]   (default: this file's folder)
Each checkpoints-<part>.csv is one part of the study (a seed); the parts are combined here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decide import BOOTSTRAP, interval, parts, spearman  # noqa: E402

AGREE = 0.8  # an approximation ranks the states as the reference does if its rho's interval lies above this
FIT = 0.99  # a net counts if every run of it ends at this training accuracy or above
MEASURES = ["n_eff", "sane"]  # deciding; lambda_max beside
REFERENCE = {24: "exact", 48: "slq"}  # width -> the reference of its class
NET = ["depth", "width", "seed"]


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    cost = folder / "cost.csv"
    return parts(folder, "checkpoints*.csv"), pd.read_csv(cost) if cost.exists() else None


def counted_nets(table: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints of nets that fit (every run at FIT or above) and whose training did not depend on the method
    (final training losses within 1e-6 relative of each other); the others are named and left out."""
    keep = []
    for net, runs in table.groupby(NET):
        finals = runs.drop_duplicates("method")
        losses = finals.final_train_loss.to_numpy(float)
        spread = float(np.ptp(losses) / abs(losses).max()) if len(losses) and abs(losses).max() > 0 else 0.0
        fits = bool((finals.final_train_acc >= FIT).all() and (finals.status == "completed").all())
        if fits and spread <= 1e-6:
            keep.append(runs)
        else:
            print(
                f"left out: depth {net[0]} width {net[1]} seed {net[2]} (training accuracy "
                f"{finals.final_train_acc.min():.3f}; training losses across methods differ by {spread:.1e})"
            )
    return pd.concat(keep, ignore_index=True) if keep else table.iloc[:0]


def agreement(table: pd.DataFrame, method: str, reference: str, measure: str, seed: int = 0):
    """Spearman's rho between the method's and the reference's value over the (net, step) states of one depth,
    averaged over the depths (within a depth, so that an approximation that only orders the depths cannot score),
    with a 95 % stratified cluster bootstrap interval (each depth's nets resampled, each with all its states)."""
    a = table[table.method == method].set_index([*NET, "step"])[measure]
    b = table[table.method == reference].set_index([*NET, "step"])[measure]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    if len(both) < 3:
        return np.nan, np.nan, np.nan, 0
    by_depth = {}  # depth -> [each net's (states, 2) values]
    for (depth, *_), g in both.groupby(level=[0, 1, 2]):
        by_depth.setdefault(depth, []).append(g.to_numpy(float))
    rng = np.random.default_rng(seed)

    def mean_rho(groups_by_depth) -> float:
        rhos = [float(spearman(v[:, 0], v[:, 1])) for v in (np.concatenate(g) for g in groups_by_depth)]
        return float(np.nanmean(rhos)) if np.isfinite(rhos).any() else np.nan

    point = mean_rho(by_depth.values())
    boot = [mean_rho([[nets[i] for i in rng.integers(0, len(nets), len(nets))] for nets in by_depth.values()])
            for _ in range(BOOTSTRAP)]  # fmt: skip
    return point, *interval(np.array(boot)), sum(len(n) for n in by_depth.values())


def judge(results: dict[str, tuple]) -> str:
    """serves if every deciding measure's interval lies above AGREE, fails if one lies below it, else undecided;
    an end exactly at AGREE is a tie, said so."""
    los, his = [results[m][1] for m in MEASURES], [results[m][2] for m in MEASURES]
    if any(v == AGREE for v in (*los, *his)):
        return "tie at the threshold"
    if all(lo > AGREE for lo in los):
        return "serves"
    if any(hi < AGREE for hi in his):
        return "fails"
    return "undecided"


def cheaper(cost: pd.DataFrame | None, width: int, method: str) -> str:
    """Whether the method's checkpoint at the deepest net of the class is faster and smaller than the reference's."""
    if cost is None:
        return "no cost table"
    c = cost[cost.width == width]
    deepest = c[c.depth == c.depth.max()].set_index("method")
    ref = REFERENCE[width]
    if method not in deepest.index or ref not in deepest.index:
        return "not measured"
    m, r = deepest.loc[method], deepest.loc[ref]
    if m.seconds == r.seconds or m.peak_mib == r.peak_mib:
        return "tie"
    return "yes" if m.seconds < r.seconds and m.peak_mib < r.peak_mib else "no"


def main(folder: Path) -> None:
    table, cost = load(folder)
    table = counted_nets(table)
    verdicts = {}
    for width, reference in REFERENCE.items():
        sub = table[table.width == width]
        methods = [m for m in sub.method.unique() if m != reference]
        print(f"width {width} (reference: {reference}), {sub.groupby(NET).ngroups} nets:")
        for method in sorted(methods):
            res = {m: agreement(sub, method, reference, m) for m in [*MEASURES, "lambda_max"]}
            for m, (p, lo, hi, n) in res.items():
                print(f"  {method} against {reference}, {m}: rho {p:+.3f} [{lo:+.3f}, {hi:+.3f}] over {n} nets")
            reading = judge(res)
            cost_adv = cheaper(cost, width, method)
            seconds = sub[sub.method == method].seconds.median(), sub[sub.method == reference].seconds.median()
            print(f"  {method}: {reading}; cheaper at the deepest net (seconds and memory): {cost_adv}; median "
                  f"checkpoint {seconds[0]:.1f} s against {seconds[1]:.1f} s")  # fmt: skip
            verdicts[(width, method)] = (reading, cost_adv)
    if cost is not None:
        print("cost table (one checkpoint, fresh process):")
        for r in cost.itertuples():
            print(f"  depth {r.depth} width {r.width} ({r.n_params} parameters) {r.method}: {r.seconds:.1f} s, "
                  f"{r.peak_mib:.0f} MiB")  # fmt: skip
    reference_ok = verdicts.get((24, "slq"), ("missing",))[0] == "serves"
    print(f"premise: SLQ ranks the states as exact does at width 24: {'met' if reference_ok else 'NOT met'} "
          f"(without it the width-48 class is not judged)")  # fmt: skip
    narrow = verdicts.get((24, "block_diag"), ("missing", ""))
    wide = verdicts.get((48, "block_diag"), ("missing", "")) if reference_ok else ("not judged", "not judged")
    if narrow == ("serves", "yes") and wide == ("serves", "yes"):
        overall = "reproduced"
    elif "fails" in (narrow[0], wide[0]) or wide[1] == "no":
        overall = "refuted"
    else:
        overall = "undecided"
    print(f"claim (d) (block_diag serves deeper nets): {overall}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
