"""``sane-report``: collect every run below some folders into one table.

This first version writes ``summary.csv`` (one row per run: status, the config keys that vary between
runs, final metrics and final curvature) and prints it. Figures come with the report issue.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from .config import UsageError
from .records import find_runs, load_run

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "dataset": ("dataset", "name"), "depth": ("model", "depth"), "width": ("model", "width"),
    "activation": ("model", "activation"), "optim": ("optim", "name"), "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"), "loss": ("loss",), "seed": ("seed",),
}  # fmt: skip


def _get(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def summarise(paths: list[Path]) -> pd.DataFrame:
    """One row per run found below ``paths``; unreadable run folders are skipped with a warning."""
    rows = []
    for root in paths:
        if not root.exists():
            raise UsageError(f"{root} does not exist; give a folder that holds sane-run outputs (e.g. outputs/)")
        runs = find_runs(root)
        if not runs:
            raise UsageError(f"{root} holds no sane-run run folders (none has a summary.json)")
        for path in runs:
            try:
                run = load_run(path)
            except UsageError as e:
                log.warning("skipping %s", e)
                continue
            row = {"run": str(path), "status": run.status}
            row.update({k: _get(run.config, p) for k, p in CONFIG_KEYS.items()})
            row.update({k: v for k, v in run.summary.items() if k.startswith("final_")})
            row["n_params"] = run.summary.get("n_params")
            row["wall_seconds"] = run.summary.get("wall_seconds")
            rows.append(row)
    if not rows:
        raise UsageError(f"no readable run folders below {', '.join(map(str, paths))} (see the warnings above)")
    return pd.DataFrame(rows)


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(prog="sane-report", description="Tabulate every sane-run run below PATH.")
    parser.add_argument("paths", nargs="+", type=Path, help="folders holding runs, e.g. outputs/")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: <first PATH>/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = summarise(args.paths)
    out = args.out or args.paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["run"]).to_string(index=False))
    print(f"wrote {out / 'summary.csv'} ({len(table)} runs)")
    return out / "summary.csv"
