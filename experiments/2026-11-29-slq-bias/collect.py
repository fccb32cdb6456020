"""Bias of every SLQ run below OUT against the exact run of the same net and checkpoint, in units of the
standard error that SLQ reports, and relative; one row per (net, step, setting), means over seeds.

Usage: python experiments/2026-11-29-slq-bias/collect.py OUT   (writes OUT/bias.csv and prints the table)
"""

import sys
from pathlib import Path

import pandas as pd

from sane_cli.records import find_runs, load_run

out = Path(sys.argv[1])
rows = []
for exact_dir in sorted(out.glob("exact_*")):
    net = exact_dir.name.removeprefix("exact_")
    exact = load_run(exact_dir).hessian.set_index("step")
    for sweep in sorted(out.glob(f"slq_{net}*")):
        for path in find_runs(sweep):
            run = load_run(path)
            c = run.config["hessian"]
            for step, r in run.hessian.set_index("step").iterrows():
                if step not in exact.index:  # (an exact run still going)
                    continue
                e = exact.loc[step]
                row = dict(
                    net=net,
                    step=step,
                    reorth=r["reorth"],
                    dtype=r["dtype"],  # (r.dtype is the row's pandas dtype)
                    steps=c["steps"],
                    probes=c["probes"],
                    seed=c["seed"],
                    seconds=r.seconds,
                    lambda_max_rel=r.lambda_max / e.lambda_max - 1,
                )
                for m in ("n_eff", "sane", "trace"):
                    row[f"{m}_z"] = (r[m] - e[m]) / r[f"{m}_se"]
                    row[f"{m}_rel"] = r[m] / e[m] - 1
                rows.append(row)
df = pd.DataFrame(rows)
df.to_csv(out / "bias.csv", index=False)
table = df.groupby(["net", "step", "reorth", "dtype", "steps", "probes"])[
    ["n_eff_z", "sane_z", "trace_z", "n_eff_rel", "sane_rel", "lambda_max_rel", "seconds"]
].mean()
print(table.round(3).to_string())
