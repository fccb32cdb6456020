"""Collect the hessian-subset study from its run folders: each measure on each subset against the whole
training set at the same checkpoint. Reads hessian.csv through sane_cli.records and recomputes nothing.

Run:  python experiments/2026-11-28-hessian-subset/collect.py outputs/subset-study
Writes results.csv and subset_error.png beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sane_cli.records import find_runs, load_run  # noqa: E402

HERE = Path(__file__).parent
MEASURES = ("lambda_max", "trace", "n_eff", "sane")
STAGES = {0: "init", 1000: "mid", 2000: "end"}


def main(root: str) -> None:
    rows = []
    for path in find_runs(root):
        run = load_run(path)
        cfg = run.config
        for _, h in run.hessian.iterrows():
            rows.append(
                dict(
                    activation=cfg["model"]["activation"],
                    lr=cfg["optim"]["lr"],
                    step=int(h.step),
                    examples=int(h.subset),
                    n_train=run.summary["n_train"],
                    lambda_max_train=h.lambda_max_train,
                    **{m: h[m] for m in MEASURES},
                )  # fmt: skip
            )
    table = pd.DataFrame(rows)
    full = table[table.examples == table.n_train].set_index(["activation", "lr", "step"])
    for m in MEASURES:
        ref = full[m].reindex(pd.MultiIndex.from_frame(table[["activation", "lr", "step"]])).to_numpy()
        table[f"{m}_rel_error"] = (table[m] - ref) / np.abs(ref)
    # every subset run logged the training loss's top eigenvalue too (Lanczos); it must equal the full run's
    ref = full.lambda_max.reindex(pd.MultiIndex.from_frame(table[["activation", "lr", "step"]])).to_numpy()
    table["lambda_max_train_check"] = (table.lambda_max_train - ref) / ref
    table = table.sort_values(["activation", "lr", "step", "examples"])
    table.to_csv(HERE / "results.csv", index=False, float_format="%.6g")

    sub = table[table.examples < table.n_train]
    fig, axes = plt.subplots(2, 4, figsize=(12, 5.5), sharex=True)
    for r, lr in enumerate(sorted(sub.lr.unique())):
        for c, m in enumerate(MEASURES):
            ax = axes[r, c]
            for i, (step, stage) in enumerate(STAGES.items()):
                for act, style in (("relu", "o-"), ("tanh", "s--")):
                    d = sub[(sub.lr == lr) & (sub.step == step) & (sub.activation == act)]
                    ax.plot(d.examples, 100 * d[f"{m}_rel_error"].abs(), style, color=f"C{i}", ms=4,
                            label=f"{act}, {stage}")  # fmt: skip
            ax.axhline(5, color="0.5", lw=0.8, ls=":")
            ax.set(xscale="log", yscale="log", title=f"{m}, lr {lr:g}")
            sizes = sorted(sub.examples.unique())
            ax.set_xticks(sizes, [str(s) for s in sizes], rotation=45)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            if r == 1:
                ax.set_xlabel("examples in the Hessian")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=6, frameon=False)
    fig.supylabel("|error| against the whole training set (%); dotted: 5 %")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(HERE / "subset_error.png", dpi=110)

    print(table.groupby(["examples"])[[f"{m}_rel_error" for m in MEASURES]].agg(lambda v: np.abs(v).max()).to_string())
    print("lambda_max_train check, max |relative difference|:", float(np.abs(table.lambda_max_train_check).max()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/subset-study")
