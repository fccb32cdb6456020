"""One row per curvature checkpoint of the study's runs: the net (depth, width, seed), the method that measured
it, the step, the measures and the seconds it took, and the run's final training loss and accuracy (the same
for every method of a net when its training did not depend on the method, which verdict.py checks).

Usage: python checkpoints.py OUT.csv RUN_FOLDER...
"""

from __future__ import annotations

import sys

import pandas as pd

from sane_cli.records import load_run

MEASURES = ["lambda_max", "n_eff", "sane", "trace", "n_eff_se", "sane_se", "seconds", "n_params"]

if __name__ == "__main__":
    rows = []
    for folder in sys.argv[2:]:
        run = load_run(folder)
        cfg, s = run.config, run.summary
        for r in run.hessian[run.hessian.kind == "scheduled"].itertuples():
            rows.append({"depth": cfg["model"]["depth"], "width": cfg["model"]["width"], "seed": cfg["seed"],
                         "method": cfg["hessian"]["method"], "step": r.step, "status": run.status,
                         "final_train_loss": s.get("final_train_loss"), "final_train_acc": s.get("final_train_acc"),
                         "final_test_acc": s.get("final_test_acc"),
                         **{m: getattr(r, m) for m in MEASURES}})  # fmt: skip
    pd.DataFrame(rows).to_csv(sys.argv[1], index=False)
    print(f"{len(rows)} checkpoints from {len(sys.argv) - 2} runs -> {sys.argv[1]}")
