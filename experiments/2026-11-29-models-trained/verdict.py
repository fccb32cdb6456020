"""The decision rule of this study (README.md) applied to the correlations.csv beside this file."""

from pathlib import Path

import pandas as pd

corr = pd.read_csv(Path(__file__).parent / "correlations.csv")
corr = corr[corr.target == "test_loss"].set_index(["scope", "measure"])


def reading(scope: str, measure: str) -> str:
    r = corr.loc[(scope, measure)]
    return "tracks" if r.spearman_lo > 0 else "runs against" if r.spearman_hi < 0 else "says nothing"


verdicts = {}
for family in ("model=mlp", "model=cnn"):
    reads = {m: reading(family, m) for m in ("n_eff", "sane")}
    for m in ("n_eff", "sane"):
        r = corr.loc[(family, m)]
        print(f"{family} {m}: rho {r.spearman_rho:.2f} [{r.spearman_lo:.2f}, {r.spearman_hi:.2f}] over "
              f"{r.n_units} models ({r.n_runs} runs): {reads[m]}")  # fmt: skip
    if "tracks" in reads.values() and "runs against" not in reads.values():
        verdicts[family] = "reproduced"
    elif "tracks" not in reads.values() and "runs against" in reads.values():
        verdicts[family] = "refuted"
    else:
        verdicts[family] = "undecided"
    sane, neff = corr.loc[(family, "sane")], corr.loc[(family, "n_eff")]
    preferred = reads["sane"] == "tracks" and sane.spearman_hi >= neff.spearman_lo
    print(f"{family}: claim (a) {verdicts[family]}; SANE preferred over N_eff: {'supported' if preferred else 'no'}")
overall = (
    "reproduced"
    if set(verdicts.values()) == {"reproduced"}
    else ("refuted" if "refuted" in verdicts.values() and "reproduced" not in verdicts.values() else "undecided")
)
print(f"overall: {overall}")
