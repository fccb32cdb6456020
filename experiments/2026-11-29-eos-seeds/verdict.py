"""The decision rule of this study (README.md) applied to the summary.csv and checkpoints.csv beside this file."""

from pathlib import Path

import numpy as np
import pandas as pd

here = Path(__file__).parent
summary = pd.read_csv(here / "summary.csv")
checkpoints = pd.read_csv(here / "checkpoints.csv")
checkpoints = checkpoints[checkpoints.kind == "scheduled"].sort_values("step")
momentum = pd.to_numeric(summary.get("momentum"), errors="coerce").fillna(0)
summary["optimiser"] = np.where(summary.optim == "adam", "adam", np.where(momentum > 0, "heavy ball", "gd"))
rows = []
for _, run in summary.iterrows():
    ratios = pd.to_numeric(checkpoints[checkpoints.run == run.label].sharpness_ratio, errors="coerce").dropna()
    first = ratios.iloc[0] if len(ratios) else np.nan  # Adam's: at step 100 (P is undefined at step 0)
    late = run.sharpness_ratio_late
    edge = first < 0.5 and 0.85 <= late <= 1.2
    rows.append({"optimiser": run.optimiser, "lr": run.lr, "seed": run.seed, "first": first, "late": late,
                 "peak": ratios.max(), "edge": edge, "overshoot": late > 1.5})  # fmt: skip
runs = pd.DataFrame(rows).sort_values(["optimiser", "lr", "seed"])
print(runs.round(3).to_string(index=False))
for optimiser, sub in runs.groupby("optimiser"):
    at_edge = sub.groupby("lr").edge.all()
    if at_edge.any() and not sub.overshoot.any():
        verdict = f"reproduced (all seeds at the edge at lr {', '.join(f'{lr:g}' for lr in at_edge[at_edge].index)})"
    elif (not sub.edge.any() and (sub.peak > 0.85).any()) or sub.overshoot.any():
        verdict = "refuted"
    else:
        verdict = "undecided"
    print(f"{optimiser}: {verdict}")
