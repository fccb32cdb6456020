"""The decision rule of this study (README.md) applied to the correlations.csv beside this file."""

from pathlib import Path

import pandas as pd

corr = pd.read_csv(Path(__file__).parent / "correlations.csv")
corr = corr[corr.scope == "all"].set_index(["measure", "target"])
for target in ("test_loss", "test_acc", "gen_gap"):
    for m in ("sane_late", "n_eff_late", "lambda_max_late", "trace_late", "sane", "n_eff"):
        r = corr.loc[(m, target)]
        print(f"{m:16} vs {target:9}: rho {r.spearman_rho:+.2f} [{r.spearman_lo:+.2f}, {r.spearman_hi:+.2f}] over "
              f"{r.n_units} learning rates ({r.n_runs} runs)")  # fmt: skip
sane, neff = corr.loc[("sane_late", "test_loss")], corr.loc[("n_eff_late", "test_loss")]
if sane.spearman_lo > 0 and not neff.spearman_lo > 0:
    verdict = "reproduced"
elif sane.spearman_lo > 0 and neff.spearman_lo > 0:
    verdict = "partly reproduced (SANE informative, but so is N_eff)"
elif sane.spearman_hi < 0 or (neff.spearman_lo > 0 and not sane.spearman_lo > 0):
    verdict = "refuted"
else:
    verdict = "undecided"
print(f"claim (b): {verdict}")
