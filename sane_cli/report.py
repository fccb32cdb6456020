"""``sane-report PATH [PATH...]``: every run below some folders turned into tables, figures and one HTML
page.

Runs are grouped by the config keys that vary between them (lr, depth, width, dataset, optimiser, seed,
...), and seeds are averaged with their standard deviation. The output folder (default
``<first PATH>/report``) holds::

    report.html          every figure and table on one page (opens offline), with the runs and configs
    summary.csv          one row per run: status (``stopped``: says running, but no process holds it), the
                         varying config keys, final metrics and curvature
    groups.csv           runs that differ only in their seed: mean and std of each final quantity
    correlations.csv     Kendall tau and Spearman rho between each measure and test loss, test accuracy
                         and the generalisation gap across finished runs, with p-values, bootstrap 95 %
                         confidence intervals (_lo, _hi) and the runs behind each (few_runs: under 8)
    basins.csv           loss basins of every run (sane_cli.basins.BASIN_COLUMNS, plus the run)
    figures/             lr_comparison and depth_comparison (when lr or depth vary); sharpness (the
                         sharpness ratio of every run over training, up to 20 runs); correlations (each
                         measure against test loss and accuracy, run by run)
    runs/<label>/        dynamics, spectra and (with spikes) basins figures; basins.csv; similarity.csv
                         (the label as a file name, made unique)

Run folders are only read, and the output folder may hold none of them. Diverged runs are listed and
marked in the figures, never dropped; unreadable run folders are skipped with a warning naming each.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .basins import BASIN_COLUMNS
from .errors import UsageError
from .records import FINISHED, STATUSES, Run, find_runs, is_locked, load_run

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "dataset": ("dataset", "name"), "model": ("model", "name"), "depth": ("model", "depth"),
    "width": ("model", "width"),
    "activation": ("model", "activation"), "optim": ("optim", "name"), "lr": ("optim", "lr"),
    "batch_size": ("optim", "batch_size"), "momentum": ("optim", "momentum"),
    "weight_decay": ("optim", "weight_decay"), "loss": ("loss",), "steps": ("steps",),
    "hessian": ("hessian", "method"), "seed": ("seed",),
}  # fmt: skip
# keys that do not change what a run computes (where it ran, how it was started) or repeat another
IGNORED_KEYS = {"lr", "depth", "width", "device", "threads", "resume", "dataset.root", "dataset.cache_dir",
                "save_checkpoint", "optim.default_lr"}  # fmt: skip
MEASURES = ("sane", "n_eff", "log_evidence", "lambda_max", "trace")
TARGETS = ("test_loss", "test_acc", "gen_gap")
FORMATS = ("png", "pdf")
QUANTITIES = (*MEASURES, "test_loss", "test_acc", "train_loss", "train_acc", "gen_gap", "stability_threshold",
              "preconditioned_sharpness", "sharpness_ratio_late")  # fmt: skip


@dataclass
class Options:
    """What to draw: figure formats and the curvature measures in the comparisons and correlations."""

    formats: tuple[str, ...] = ("png",)
    measures: tuple[str, ...] = MEASURES
    jobs: int | None = None  # processes for the per-run figures; None: one per CPU
    status: tuple[str, ...] | None = None  # only runs of these statuses (run_status); None: every run


def _get(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def collect(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Every readable run below ``paths`` and a message for each unreadable one (also logged).

    Raises:
        UsageError: a path that does not exist or holds no run folder, or no readable run at all.
    """
    runs, skipped, seen = [], [], set()
    for root in paths:
        if not root.exists():
            raise UsageError(f"{root} does not exist; give a folder that holds sane-run outputs (e.g. outputs/)")
        found = find_runs(root)
        if not found:
            raise UsageError(f"{root} holds no sane-run run folders (none has a summary.json); check the path")
        for path in found:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                runs.append(load_run(path))
            except UsageError as e:
                log.warning("skipping %s", e)
                skipped.append(str(e))
    if not runs:
        raise UsageError(f"no readable run folders below {', '.join(map(str, paths))} (see the warnings above)")
    return runs, skipped


def summary_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: path, status, config keys, size, and the final metrics and curvature (with the
    standard errors of estimates). gen_gap = test loss - train loss; acc_gap = train acc - test acc."""
    rows = []
    for run in runs:
        s = run.summary
        row = {"run": str(run.path), "status": run_status(run)}
        row.update({k: _get(run.config, p) for k, p in CONFIG_KEYS.items()})
        row.update({k: v for k, v in flat_config(run.config).items() if k not in row})
        row.update(n_params=s.get("n_params"), steps_done=s.get("steps_done"), wall_seconds=s.get("wall_seconds"))
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            value = s.get(f"final_{key}")
            row[key] = np.nan if value is None else value  # null: not reached, or not finite (a diverged run)
        h = run.hessian[run.hessian.kind != "pre_spike"] if len(run.hessian) else run.hessian
        last = h.sort_values("step").iloc[-1] if len(h) else None
        for key in ("lambda_max", "lambda_max_train", "lambda_min", "trace", "trace_se", "n_eff", "n_eff_se",
                    "n_eff_bound", "sane", "sane_se", "sane_bound", "log_evidence", "preconditioned_sharpness",
                    "stability_threshold", "sharpness_ratio"):  # fmt: skip
            row[key] = float(last[key]) if last is not None else np.nan
        row["sharpness_ratio_late"] = late_sharpness_ratio(run.hessian)
        row["curvature_step"] = int(last.step) if last is not None else np.nan
        row["method"] = last.method if last is not None else None
        # the Hessian's examples: the whole training set, or (marked) a subset of it
        n_train = s.get("n_train")
        row["hessian_examples"] = int(last.subset) if last is not None else np.nan
        row["hessian_on"] = (
            None
            if last is None
            else "training set"
            if last.subset == n_train
            else f"subset {int(last.subset)}/{n_train}"
        )
        row["gen_gap"] = row["test_loss"] - row["train_loss"]
        row["acc_gap"] = row["train_acc"] - row["test_acc"]
        rows.append(row)
    table = pd.DataFrame(rows)
    table["label"] = run_labels(table)
    dotted = [c for c in table.columns if "." in c]  # the rest of the config, last
    return table[["label", *[c for c in table.columns if c != "label" and c not in dotted], *dotted]]


def run_status(run: Run) -> str:
    """The run's status, but ``stopped`` for one that says ``running`` while no process holds its folder:
    it was killed (SIGKILL, a lost node) and can be continued with ``sane-run resume=<folder>``."""
    if run.status == "running" and not is_locked(run.path):
        return "stopped"
    return run.status


def flat_config(config: dict) -> dict:
    """Every config value under its dotted key (``hessian.probes``), but those in CONFIG_KEYS under their
    short name (``lr``), and without keys that do not change results (device, data folders) or duplicate
    another (the ``lr``, ``depth``, ``width`` shortcuts). A null value is the string ``null``, a value of its own
    (``hessian.subset`` null, the whole training set, against 256), where a key a run lacks stays missing."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
    dotted = {".".join(p): k for k, p in CONFIG_KEYS.items()}
    out = {}
    for key, value in flat.items():
        if key in IGNORED_KEYS or key.startswith(("hydra.", "experiment")):
            continue
        out[dotted.get(key, key)] = "null" if value is None else value
    return out


def varying_keys(table: pd.DataFrame) -> list[str]:
    """The config keys that take more than one value across the runs: those of CONFIG_KEYS first (lr,
    depth, width, dataset, optimiser, seed, ...), then any other (dotted, e.g. ``hessian.probes``)."""
    config_columns = list(CONFIG_KEYS) + sorted(c for c in table.columns if "." in c)
    return [k for k in config_columns if k in table and table[k].astype(str).nunique() > 1]


def run_labels(table: pd.DataFrame) -> list[str]:
    """A short unique name per run from its varying config keys, e.g. ``lr=0.5 depth=8``; runs that share
    every key are numbered; a lone run is named by its folder."""
    keys = varying_keys(table)
    if not keys:
        base = [Path(p).name for p in table.run]
    else:
        # (a key the run's config lacks, optim.momentum of an Adam run, is left out of its label)
        base = [" ".join(f"{k}={_fmt(row[k])}" for k in keys if not _missing(row[k])) for _, row in table.iterrows()]
    labels, count = [], {}
    for b in base:
        count[b] = count.get(b, 0) + 1
        labels.append(b if base.count(b) == 1 else f"{b} #{count[b]}")
    return labels


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def slug(label: str) -> str:
    """A file-name-safe form of a run label."""
    return re.sub(r"[^A-Za-z0-9=.,_#-]+", "_", label).strip("_") or "run"


def unique_slugs(labels) -> list[str]:
    """A folder name per label, distinct even where two labels differ only in characters a file name cannot
    hold (``a/b`` and ``a_b``): later ones get ``~2``, ``~3``, ... (case-insensitive, for such file systems).

    >>> unique_slugs(["lr=0.1", "dataset.root=a/b", "dataset.root=a_b"])
    ['lr=0.1', 'dataset.root=a_b', 'dataset.root=a_b~2']
    """
    seen, out = set(), []
    for label in labels:
        base = name = slug(label)
        n = 1
        while name.lower() in seen:
            n += 1
            name = f"{base}~{n}"
        seen.add(name.lower())
        out.append(name)
    return out


def late_sharpness_ratio(hessian: pd.DataFrame) -> float:
    """The median sharpness ratio (sharpness / stability threshold) over the scheduled checkpoints of the last
    third of a run's steps (from 2/3 of its last checkpoint's step on): where it sits once progressive
    sharpening is over. NaN without such checkpoints."""
    h = hessian[hessian.kind == "scheduled"] if len(hessian) else hessian
    if not len(h):
        return np.nan
    late = pd.to_numeric(h[h.step >= 2 / 3 * h.step.max()].sharpness_ratio, errors="coerce").dropna()
    return float(late.median()) if len(late) else np.nan


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """Finished runs (completed, or converged: stopped by their criterion) grouped by every varying key but
    the seed: n_runs, and mean and std (over seeds) of each final quantity; n_diverged counts the group's
    diverged runs."""
    keys = [k for k in varying_keys(table) if k != "seed"]
    done = table[table.status.isin(FINISHED)]
    if not keys:
        groups = {"all runs": (done, table)}
    else:
        groups = {
            name: (sub, table[(table[keys].astype(str) == pd.Series(sub.iloc[0][keys]).astype(str)).all(axis=1)])
            for name, sub in done.groupby(keys, dropna=False, sort=True)
        }
    rows = []
    for name, (sub, everything) in groups.items():
        row = dict(zip(keys, name if isinstance(name, tuple) else (name,), strict=False)) if keys else {}
        row.update(n_runs=len(sub), n_diverged=int((everything.status == "diverged").sum()))
        for q in QUANTITIES:
            values = pd.to_numeric(sub[q], errors="coerce")
            row[f"{q}_mean"] = values.mean()
            row[f"{q}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


SHARPNESS_RUNS = 20  # the most runs drawn in figures/sharpness (the sharpness ratio over training)
BOOTSTRAP = 2000  # resamples of the runs behind each correlation's confidence interval
FEW_RUNS = 8  # a correlation over fewer runs is marked (few_runs) and read with care


def correlations(table: pd.DataFrame, measures=MEASURES, targets=TARGETS, *, seed: int = 0) -> pd.DataFrame:
    """Rank correlations across finished runs between each measure and each target (test loss, test
    accuracy, generalisation gap): Kendall tau-b and Spearman rho with their p-values and 95 % confidence
    intervals (percentile bootstrap over runs: ``BOOTSTRAP`` resamples of the runs with replacement, seeded by
    ``seed``), over the runs where both are finite (n_runs; NaN with fewer than 3); ``few_runs`` marks those
    over fewer than ``FEW_RUNS``."""
    from scipy.stats import kendalltau, spearmanr

    done = table[table.status.isin(FINISHED)]
    rows = []
    for m in measures:
        for t in targets:
            x, y = pd.to_numeric(done[m], errors="coerce"), pd.to_numeric(done[t], errors="coerce")
            ok = np.isfinite(x) & np.isfinite(y)
            row = {"measure": m, "target": t, "n_runs": int(ok.sum()), "few_runs": bool(ok.sum() < FEW_RUNS)}
            nan = dict.fromkeys(("kendall_tau", "kendall_lo", "kendall_hi", "kendall_p", "spearman_rho",
                                 "spearman_lo", "spearman_hi", "spearman_p"), np.nan)  # fmt: skip
            row.update(nan)
            if ok.sum() >= 3 and x[ok].nunique() > 1 and y[ok].nunique() > 1:
                xs, ys = x[ok].to_numpy(float), y[ok].to_numpy(float)
                tau, tau_p = kendalltau(xs, ys)
                rho, rho_p = spearmanr(xs, ys)
                idx = np.random.default_rng(seed).integers(0, len(xs), size=(BOOTSTRAP, len(xs)))
                taus, rhos = bootstrap_rank_correlations(xs[idx], ys[idx])
                (tau_lo, tau_hi), (rho_lo, rho_hi) = (np.nanpercentile(v, [2.5, 97.5]) for v in (taus, rhos))
                row.update(kendall_tau=tau, kendall_lo=tau_lo, kendall_hi=tau_hi, kendall_p=tau_p, spearman_rho=rho,
                           spearman_lo=rho_lo, spearman_hi=rho_hi, spearman_p=rho_p)  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_rank_correlations(x: np.ndarray, y: np.ndarray, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b and Spearman rho of each row of x and y (resamples, n), vectorised: tau-b as
    sum s_x s_y / sqrt(sum s_x^2 sum s_y^2) over the pairs' signs s = sign(v_i - v_j) (ties count 0 in the
    numerator and drop out of the denominator, which is tau-b), rho as the Pearson correlation of average
    ranks. NaN for a row in which x or y is constant."""
    from scipy.stats import rankdata

    taus = np.empty(len(x))
    for a in range(0, len(x), chunk):  # (chunk, n, n) signs at a time
        sx = np.sign(x[a : a + chunk, :, None] - x[a : a + chunk, None, :])
        sy = np.sign(y[a : a + chunk, :, None] - y[a : a + chunk, None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            taus[a : a + chunk] = (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    return taus, rhos


def _per_run(args: tuple[str, str, str, tuple[str, ...]]) -> tuple[str, pd.DataFrame, list[int], list[str], str]:
    """Basins and figures of one run (in a worker process): (label, basins table, spikes, figure files,
    a warning naming what could not be made). A damaged file costs only what needs it: the basins table
    and the dynamics figure survive a broken spectrum, and the rest of the report goes on."""
    from . import basins as B
    from . import plots

    path, label, folder, formats = args
    failed = []

    def attempt(what: str, make, default=None):
        try:
            return make()
        except Exception as e:  # a partial run folder must not cost the report of every other run
            failed.append(f"{what} ({type(e).__name__}: {e})")
            return default

    run = attempt("run", lambda: load_run(path))
    if run is None:
        return label, pd.DataFrame(columns=BASIN_COLUMNS), [], [], f"{path}: no figures: {'; '.join(failed)}"
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table = attempt("basins", lambda: B.analyse(run), pd.DataFrame(columns=BASIN_COLUMNS))
    spikes = [int(s) for s in table.spike_step.dropna()]
    table.to_csv(out / "basins.csv", index=False)
    figures = {"dynamics": lambda: plots.dynamics(run, spikes, label)}
    similarity = attempt("similarity", lambda: B.similarity_matrix(run)) if run.spectrum_steps() else None
    if similarity is not None:
        sim_steps, sim = similarity
        pd.DataFrame(sim, index=sim_steps, columns=sim_steps).to_csv(out / "similarity.csv")
        figures["spectra"] = lambda: plots.spectra(run, label)
        if spikes:
            figures["basins"] = lambda: plots.basins(run, table, sim_steps, sim, label)
    files = []
    for name, draw in figures.items():
        files += attempt(f"{name} figure", lambda draw=draw, name=name: _save(draw(), out / name, formats), [])
    return label, table, spikes, files, f"{path}: {'; '.join(failed)}" if failed else ""


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[str]:
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        fig.savefig(stem.with_suffix(f".{fmt}"))
        paths.append(str(stem.with_suffix(f".{fmt}")))
    plt.close(fig)
    return paths


def report(paths: list[Path], out: Path | None = None, options: Options | None = None) -> Path:
    """Write the report of every run below ``paths`` into ``out`` (default ``<paths[0]>/report``) and
    return the path of report.html."""
    from . import plots

    options = options or Options()
    start = time.perf_counter()
    runs, skipped = collect(paths)
    if options.status is not None:
        kept = [r for r in runs if run_status(r) in options.status]
        if not kept:
            raise UsageError(f"none of the {len(runs)} runs below {', '.join(map(str, paths))} has status "
                             f"{' or '.join(options.status)}; drop --status or choose another")  # fmt: skip
        log.info("%d of %d runs have status %s", len(kept), len(runs), " or ".join(options.status))
        runs = kept
    out = Path(out) if out is not None else paths[0] / "report"
    for folder in sorted({*(r.path for r in runs), *(f for root in paths for f in find_runs(root))}):  # damaged too
        if out.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"the output folder {out} lies inside the run folder {folder}; choose another (-o)")
        if folder.resolve().is_relative_to(out.resolve()):
            raise UsageError(
                f"the output folder {out} holds run folders ({folder}); the report's files would mix with them: "
                f"write it to {out / 'report'} or another folder (-o)"
            )
    (out / "figures").mkdir(parents=True, exist_ok=True)
    table = summary_table(runs)
    keys = varying_keys(table)
    log.info("%d runs (%s); varying: %s", len(runs), _status_counts(table), ", ".join(keys) or "nothing")

    jobs = [
        (str(r.path), lab, str(out / "runs" / folder), options.formats)
        for r, lab, folder in zip(runs, table.label, unique_slugs(table.label), strict=True)
    ]
    n_workers = min(options.jobs or os.cpu_count() or 1, len(jobs))
    bar = dict(total=len(jobs), desc="per-run figures", unit="run", disable=None)  # a bar on a terminal only
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers, mp_context=get_context("fork")) as pool:
            per_run = list(tqdm(pool.map(_per_run, jobs), **bar))
    else:
        per_run = [_per_run(j) for j in tqdm(jobs, **bar)]
    for *_, warning in per_run:
        if warning:
            log.warning("%s", warning)
            skipped.append(warning)
    tables = [t.assign(run=lab) for lab, t, *_ in per_run if len(t)]
    basins = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["run", *BASIN_COLUMNS])
    basins = basins[["run", *[c for c in basins.columns if c != "run"]]]
    basins.to_csv(out / "basins.csv", index=False)
    table["spikes"] = [len(s) for _, _, s, *_ in per_run]
    table.to_csv(out / "summary.csv", index=False)

    groups = group_table(table)
    groups.to_csv(out / "groups.csv", index=False)
    corr = correlations(table, options.measures)
    corr.to_csv(out / "correlations.csv", index=False)

    comparisons = {}
    diverged = table[table.status == "diverged"]
    for x, panels in (
        ("lr", [*options.measures, "test_acc", "gen_gap"]),
        ("depth", [*options.measures, "test_acc"]),
    ):
        if x in keys and len(groups):
            others = [k for k in keys if k not in (x, "seed")]
            g, d = groups.copy(), diverged.copy()
            line = None
            if others:
                line = others[0] if len(others) == 1 else "config"
                if line == "config":  # one line per combination of the other keys
                    g[line], d[line] = _combinations(g, others), _combinations(d, others)
            if g.get("preconditioned_sharpness_mean", pd.Series(dtype=float)).notna().any():
                panels = [*panels, "preconditioned_sharpness"]  # Adam's sharpness, against its threshold
            fig = plots.comparison(g, x, line, [p for p in panels if f"{p}_mean" in g], d)
            comparisons[x] = _save(fig, out / "figures" / f"{x}_comparison", options.formats)
    finished = table[table.status.isin(FINISHED)]
    measures = [m for m in options.measures if pd.to_numeric(finished[m], errors="coerce").notna().sum() >= 3]
    if len(finished) >= 3 and measures:  # each measure against test loss and accuracy, run by run
        colour = "model" if "model" in keys else None
        fig = plots.correlations(finished, corr, measures, ("test_loss", "test_acc"), colour)
        comparisons["correlations"] = _save(fig, out / "figures" / "correlations", options.formats)
    measured = [(lab, r.hessian) for r, lab in zip(runs, table.label, strict=True) if len(r.hessian)]
    if 0 < len(measured) <= SHARPNESS_RUNS:  # (more lines than that are no longer readable in one figure)
        fig = plots.sharpness(measured)
        comparisons["sharpness"] = _save(fig, out / "figures" / "sharpness", options.formats)

    page = out / "report.html"
    page.write_text(_html(paths, runs, table, keys, skipped, groups, corr, comparisons, per_run, out))
    log.info("wrote %s in %.1f s", page, time.perf_counter() - start)
    return page


def _combinations(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's values of ``keys`` as ``key=value ...`` (a list, so that a frame without rows works too)."""
    return [" ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, r, strict=True)) for r in df[keys].itertuples(index=False)]


def _status_counts(table: pd.DataFrame) -> str:
    return ", ".join(f"{n} {s}" for s, n in table.status.value_counts().items())


def _html(paths, runs, table, keys, skipped, groups, corr, comparisons, per_run, out: Path) -> str:
    """report.html: plain HTML with relative links to the figures, readable offline."""
    from omegaconf import OmegaConf

    def img(files: list[str], alt: str) -> str:
        pngs = [f for f in files if f.endswith(".png")]
        if pngs:
            return f'<img src="{html.escape(os.path.relpath(pngs[0], out))}" alt="{html.escape(alt)}">'
        return " ".join(f'<a href="{html.escape(os.path.relpath(f, out))}">{html.escape(alt)} (pdf)</a>' for f in files)

    def tbl(df: pd.DataFrame) -> str:
        text = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")
        for status in ("diverged", "failed", "interrupted", "running", "stopped"):  # runs that did not complete
            text = text.replace(f"<td>{status}</td>", f'<td class="bad">{status}</td>')
        return text

    cols = ["label", "status", *keys, "n_params", "method", "steps_done", "train_loss", "test_loss", "test_acc",
            "gen_gap", "lambda_max", "stability_threshold", "sharpness_ratio", "hessian_on", "sane", "n_eff", "trace",
            "spikes"]  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sane-report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "img{max-width:100%} table.t{border-collapse:collapse;font-size:12px;margin:0.5em 0}",
        "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}",
        "td.bad{color:#b00;font-weight:bold} details{margin:0.4em 0}",
        "pre{background:#f6f6f6;padding:0.5em;font-size:11px}",
        "</style></head><body>",
        "<h1>sane-report</h1>",
        f"<p>{len(runs)} runs below {html.escape(', '.join(map(str, paths)))} ({_status_counts(table)}); "
        f"config keys that vary: {html.escape(', '.join(keys) or 'none')}. "
        f"Written {time.strftime('%Y-%m-%d %H:%M')}.</p>",
    ]
    if skipped:
        parts.append("<p><b>Skipped (unreadable run folders, or runs without figures):</b></p><ul>")
        parts += [f"<li>{html.escape(s)}</li>" for s in skipped]
        parts.append("</ul>")
    on_subset = table["hessian_on"].astype(str).str.startswith("subset") if "hessian_on" in table else []
    if any(on_subset):
        parts.append(
            f"<p><b>{int(sum(on_subset))} of {len(table)} runs took their curvature on a subset of the training set "
            "(column hessian_on):</b> their lambda_max, trace, N_eff and SANE are of a different function from the "
            "loss being trained; lambda_max_train in summary.csv is the top eigenvalue of the training loss.</p>"
        )
    parts += ["<h2>Runs</h2>", tbl(table[[c for c in cols if c in table]])]
    titles = {
        "lr": "Learning-rate comparison",
        "depth": "Depth comparison",
        "sharpness": "Sharpness over training",
        "correlations": "Measures against test loss and accuracy",
    }
    captions = {
        "sharpness": "Each run's sharpness over its stability threshold at every scheduled checkpoint (lambda_max of "
        "the training loss; for Adam, of P^-1 H); 1 is the edge of stability. sharpness_ratio_late in summary.csv is "
        "its median over the last third of the run.",
        "correlations": "Final values of each finished run; the titles give Spearman's rho with its 95 % bootstrap "
        "interval (the table below).",
    }
    for x, files in comparisons.items():
        caption = captions.get(x, "Final values; mean and standard deviation over seeds; crosses on the x axis mark "
                               "diverged runs.")  # fmt: skip
        parts += [f"<h2>{titles[x]}</h2>", f"<p>{caption}</p>", img(files, f"{x} comparison")]
    parts += [
        "<h2>Correlations</h2><p>Across finished runs (completed or converged), final values; _lo and _hi bound "
        f"the 95 % confidence interval (percentile bootstrap over runs, {BOOTSTRAP} resamples); few_runs: fewer "
        f"than {FEW_RUNS} runs behind it.</p>", tbl(corr),
        "<h2>Groups</h2><p>Completed runs that differ only in their seed.</p>", tbl(groups),
        "<h2>Per run</h2>",
    ]  # fmt: skip
    for run, (label, basins, _, files, _) in zip(runs, per_run, strict=True):
        status = run_status(run)
        parts.append(f"<details><summary><b>{html.escape(label)}</b> ({status}) {html.escape(str(run.path))}</summary>")
        for f in files:
            if f.endswith(".png") or not any(g.endswith(".png") for g in files):
                parts.append(img([f], Path(f).stem))
        if basins["spike_step"].notna().any():
            parts += ["<p>Loss basins</p>", tbl(basins)]
        config = OmegaConf.to_yaml(OmegaConf.create(run.config))
        parts.append(f"<details><summary>config</summary><pre>{html.escape(config)}</pre></details></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="sane-report", description="Figures, tables and report.html for every sane-run run below PATH."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="folders holding runs, e.g. outputs/")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: <first PATH>/report)")
    parser.add_argument("--format", default="png", help="figure formats, comma separated: png, pdf (default png)")
    parser.add_argument(
        "--measures", default=",".join(MEASURES), help=f"curvature measures to compare (default {','.join(MEASURES)})"
    )
    parser.add_argument("-j", "--jobs", type=int, default=None, help="processes for per-run figures (default: CPUs)")
    parser.add_argument(
        "--status", default=None, help="only runs of these statuses, comma separated (e.g. converged; default: all)"
    )
    args = parser.parse_args(argv)
    status = None if args.status is None else tuple(x.strip() for x in args.status.split(",") if x.strip())
    allowed = (*STATUSES, "stopped")
    if status is not None and (not status or any(x not in allowed for x in status)):
        raise UsageError(f"--status={args.status!r} is invalid: choose among {', '.join(allowed)}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip())
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--format={args.format!r} is invalid: use png, pdf or png,pdf")
    if not measures or any(m not in MEASURES for m in measures):
        raise UsageError(f"--measures={args.measures!r} is invalid: choose among {', '.join(MEASURES)}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs={args.jobs} is invalid: must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    page = report(args.paths, args.out, Options(formats, measures, args.jobs, status))
    print(f"wrote {page}")
    return page
