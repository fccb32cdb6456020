"""The layer-ordered approximations against exact, from sane-report tables (no recomputation).

Each configuration was run once per Hessian method (`hessian=exact`, `block_diag`, `block_band`): the training
is the same (checked here: equal final training loss), so the curvature rows of the three runs pair up step by
step. From a report's summary.csv (one row per run: depth, seed, method, ...) and checkpoints.csv (every
curvature checkpoint of every run) this writes, beside itself or into --out:

  errors.csv   per method and model (depth, or the study-(a) model): the median and largest relative error
               |approx / exact - 1| over seeds and checkpoints of N_eff, SANE, lambda_max and the trace, and
               the mean seconds a checkpoint took with each method
  ranks.csv    per method and measure, the rank correlation (Spearman) between approximate and exact values
               across models (the last checkpoint of each run; 95 % percentile bootstrap over models, 2,000
               resamples) and across the checkpoints of each run (the median and lowest over runs)

Usage: python compare.py DEEP_REPORT [MODELS_CSV] [--out FOLDER]   (MODELS_CSV: approximate.py's models.csv;
       DEEP_REPORT `-` keeps the depth sweep's rows already in FOLDER's tables)
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

METHODS = ("block_diag", "block_band")
MEASURES = ("n_eff", "sane", "lambda_max", "trace")
BOOTSTRAP = 2000


def paired(report: Path, model_keys: list[str]) -> pd.DataFrame:
    """Every scheduled checkpoint of an approximate run beside the same step of the exact run of its
    configuration: columns <measure>, <measure>_exact, seconds, seconds_exact, method, model keys, seed, step."""
    summary = pd.read_csv(report / "summary.csv")
    summary = summary[summary.status.isin(["completed", "converged"])]
    checkpoints = pd.read_csv(report / "checkpoints.csv")
    keys = [k for k in model_keys if k in summary]
    rows = checkpoints[checkpoints.kind == "scheduled"].merge(
        summary[["label", "hessian", "seed", "train_loss", *keys]], left_on="run", right_on="label"
    )
    on = [*keys, "seed", "step"]
    exact = rows[rows.hessian == "exact"].set_index(on)
    pairs = []
    for method in METHODS:
        approx = rows[rows.hessian == method].set_index(on)
        joined = approx.join(exact[[*MEASURES, "seconds", "train_loss"]].add_suffix("_exact"), how="inner")
        same = np.allclose(joined.train_loss, joined.train_loss_exact, rtol=1e-6)
        if not same:
            raise SystemExit(f"{report}: the {method} runs did not train as the exact ones (final training loss)")
        pairs.append(joined.reset_index().assign(method=method))
    return pd.concat(pairs, ignore_index=True)


def errors(pairs: pd.DataFrame, unit: list[str]) -> pd.DataFrame:
    rows = []
    for (method, *model), sub in pairs.groupby(["method", *unit], sort=True):
        row = {"method": method, **dict(zip(unit, model, strict=True)), "runs": sub.seed.nunique(),
               "checkpoints": len(sub)}  # fmt: skip
        for m in MEASURES:
            err = (sub[m] / sub[f"{m}_exact"] - 1).abs()
            row[f"{m}_median_err"], row[f"{m}_max_err"] = err.median(), err.max()
        row["seconds"], row["seconds_exact"] = sub.seconds.mean(), sub.seconds_exact.mean()
        rows.append(row)
    return pd.DataFrame(rows)


def ranks(pairs: pd.DataFrame, unit: list[str], scope: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, sub in pairs.groupby("method", sort=True):
        last = sub.sort_values("step").groupby([*unit, "seed"]).tail(1)
        runs = list(sub.groupby([*unit, "seed"]))
        for m in MEASURES:
            x, y = last[f"{m}_exact"].to_numpy(), last[m].to_numpy()
            idx = rng.integers(0, len(x), (BOOTSTRAP, len(x)))
            boot = [spearmanr(x[i], y[i])[0] for i in idx]
            within = [spearmanr(r[f"{m}_exact"], r[m])[0] for _, r in runs if len(r) > 2] or [np.nan]
            rows.append({
                "scope": scope, "method": method, "measure": m, "models": len(x),
                "rho_across_models": spearmanr(x, y)[0], "lo": np.nanpercentile(boot, 2.5),
                "hi": np.nanpercentile(boot, 97.5), "runs": len(within),
                "rho_within_run_median": np.nanmedian(within), "rho_within_run_min": np.nanmin(within),
            })  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    warnings.simplefilter("ignore")  # constant resamples (rho undefined) are dropped by nanpercentile
    parser = argparse.ArgumentParser()
    parser.add_argument("deep", help="sane-report folder of the depth sweep; `-`: keep the depth sweep's rows "
                        "already in --out's tables (only the study-(a) models re-measured)")  # fmt: skip
    parser.add_argument("models", type=Path, nargs="?", help="approximate.py's table of the study-(a) models")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    if args.deep == "-":
        kept_e, kept_r = pd.read_csv(args.out / "errors.csv"), pd.read_csv(args.out / "ranks.csv")
        tables_e = [kept_e[kept_e["model"].isna()].dropna(axis=1, how="all")]
        tables_r = [kept_r[~kept_r["scope"].str.startswith("study (a)")]]
    else:
        deep = paired(Path(args.deep), ["depth"])
        tables_e, tables_r = [errors(deep, ["depth"])], [ranks(deep, ["depth"], "deep MLPs")]
        for depth, sub in deep.groupby("depth"):
            tables_r.append(ranks(sub, ["depth"], f"depth {depth}"))
    if args.models:  # one checkpoint per run (its last), already paired with exact
        models = pd.read_csv(args.models)
        keys = [
            k for k in ("model", "depth", "width", "model.channels", "model.kernel", "model.pooling") if k in models
        ]
        models[keys] = models[keys].astype(str).fillna("-")  # (pandas keeps NaN through astype(str))
        tables_e.append(errors(models, keys))
        tables_r.append(ranks(models[models.seed == 0], keys, "study (a) models, seed 0"))
        tables_r.append(ranks(models, keys, "study (a) models, every seed"))
    pd.concat(tables_e, ignore_index=True).to_csv(args.out / "errors.csv", index=False)
    pd.concat(tables_r, ignore_index=True).to_csv(args.out / "ranks.csv", index=False)
    print(pd.concat(tables_r, ignore_index=True).round(3).to_string())


if __name__ == "__main__":
    main()
