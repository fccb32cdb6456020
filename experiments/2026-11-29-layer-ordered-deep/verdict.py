"""The decision rule of this study (README.md) applied to the ranks.csv and errors.csv beside this file."""

from pathlib import Path

import pandas as pd

here = Path(__file__).parent
ranks, errors = pd.read_csv(here / "ranks.csv"), pd.read_csv(here / "errors.csv")
model_sets = ["deep MLPs", "study (a) models, seed 0"]
for method in ("block_diag", "block_band"):
    serves, fails, missing = True, False, []
    for scope in model_sets:
        for m in ("n_eff", "sane"):
            row = ranks[(ranks.scope == scope) & (ranks.method == method) & (ranks.measure == m)]
            if row.empty:
                missing.append(scope)
                serves = False
                continue
            r = row.iloc[0]
            interval = f"[{r.lo:.3f}, {r.hi:.3f}]"
            print(f"{method} {scope} {m}: rho {r.rho_across_models:.3f} {interval} over {r.models} models")
            # a rank correlation of a dozen values can be exactly 0.8: compared to 1e-9 (0.79999... is 0.8)
            serves &= r.lo >= 0.8 - 1e-9
            fails |= r.hi < 0.8 - 1e-9
    for depth in (12, 16):
        for m in ("n_eff", "sane"):
            r = ranks[(ranks.scope == f"depth {depth}") & (ranks.method == method) & (ranks.measure == m)].iloc[0]
            print(f"{method} depth {depth} {m}: median rho over a run's checkpoints {r.rho_within_run_median:.3f}")
            serves &= r.rho_within_run_median >= 0.8 - 1e-9
    cost = errors[(errors.method == method) & (errors.depth == 16)].iloc[0]
    cheaper = cost.seconds < cost.seconds_exact
    print(f"{method} depth 16: {cost.seconds:.1f} s a checkpoint against exact {cost.seconds_exact:.1f} s")
    state = "fails" if fails else "serves" if serves and cheaper else "undecided"
    note = f" (not run: {', '.join(sorted(set(missing)))})" if missing else ""
    print(f"{method}: {state} model comparison{note}")
