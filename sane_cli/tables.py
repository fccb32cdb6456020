"""The report's tables and statistics, from run folders as read by sane_cli.records: one row per run
(:func:`summary_table`), runs grouped over seeds (:func:`group_table`), and rank correlations between each
curvature measure and generalisation with bootstrap intervals (:func:`correlations`). Imports neither torch
nor matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UsageError
from .records import (
    FINAL_COLUMNS,
    FINISHED,
    LAYER_COLUMNS,
    VALUE_COLUMNS,
    Run,
    config_value,
    find_runs,
    is_locked,
    load_run,
)

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "dataset": ("dataset", "name"), "model": ("model", "name"), "depth": ("model", "depth"),
    "width": ("model", "width"),
    "activation": ("model", "activation"), "optim": ("optim", "name"), "lr": ("optim", "lr"),
    "batch_size": ("optim", "batch_size"), "momentum": ("optim", "momentum"),
    "weight_decay": ("optim", "weight_decay"), "loss": ("loss",), "steps": ("steps",),
    "hessian": ("hessian", "method"), "seed": ("seed",),
}  # fmt: skip
# keys that do not change what a run computes (where it ran, how it was started, what else it recorded or
# reported to) or repeat another
IGNORED_KEYS = {"lr", "depth", "width", "device", "threads", "resume", "dataset.root", "dataset.cache_dir",
                "dataset.download", "dataset.mirror", "save_checkpoint", "optim.default_lr", "hessian.layers",
                "logger.name", "logger.dir"}  # fmt: skip
MEASURES = ("sane", "n_eff", "log_evidence", "lambda_max", "trace")  # the measures compared by default
# each averaged over the scheduled checkpoints of the last third of a run (late_means): at large learning rates
# one end-point Hessian is a random phase of an oscillation
LATE = tuple(f"{m}_late" for m in ("sane", "n_eff", "lambda_max", "trace"))
CHOOSABLE = (*MEASURES, *LATE)  # what --measures may choose
TARGETS = ("test_loss", "test_acc", "gen_gap")
QUANTITIES = (*MEASURES, *LATE, "test_loss", "test_acc", "train_loss", "train_acc", "gen_gap", "stability_threshold",
              "preconditioned_sharpness", "sharpness_ratio_late")  # fmt: skip


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


def summary_table(runs: list[Run], notes: list[str] | None = None) -> pd.DataFrame:
    """One row per run: path, status, config keys, size, and the final metrics and curvature (with the
    standard errors of estimates). gen_gap = test loss - train loss; acc_gap = train acc - test acc.

    Each run's tables are checked against its summary.json (:func:`record_disagreement`): where they disagree
    the curvature columns are left empty rather than show a stale checkpoint as the final one. Non-finite
    final values are left empty too. Each such case is appended to ``notes`` (and logged)."""
    notes = [] if notes is None else notes
    rows = []
    for run in runs:
        s = run.summary
        row = {"run": str(run.path), "status": run_status(run)}
        row.update({k: config_value(run.config, ".".join(p)) for k, p in CONFIG_KEYS.items()})
        row.update({k: v for k, v in flat_config(run.config).items() if k not in row})
        row.update(n_params=s.get("n_params"), steps_done=s.get("steps_done"), wall_seconds=s.get("wall_seconds"))
        infinite = []
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            value = s.get(f"final_{key}")  # null: not reached, or not finite (a diverged run)
            row[key] = np.nan if value is None or not np.isfinite(value) else value
            if value is not None and not np.isfinite(value):
                infinite.append(f"{key} {value}")
        if infinite:
            notes.append(f"{run.path}: summary.json's final {', '.join(infinite)}: not finite, left empty")
        h = run.hessian[run.hessian.kind != "pre_spike"] if len(run.hessian) else run.hessian
        last = h.sort_values("step").iloc[-1] if len(h) else None
        disagreement = record_disagreement(run)
        if disagreement:
            notes.append(f"{run.path}: {disagreement}; its final curvature is left empty")
            last = None
        for key in VALUE_COLUMNS:  # the last checkpoint's values, with their standard errors and bounds
            row[key] = float(last[key]) if last is not None else np.nan
        row["sharpness_ratio_late"] = late_sharpness_ratio(run.hessian) if last is not None else np.nan
        row.update({k: v if last is not None else np.nan for k, v in late_means(run.hessian).items()})
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


def record_disagreement(run: Run) -> str:
    """Where a run's tables disagree with what its summary.json recorded at the end ("" where they agree, or
    where the summary recorded no end): metrics.csv's last step against ``final_step``; hessian.csv's last
    checkpoint (pre-spike ones aside) against ``final_curvature_step`` and its values against the final ones.
    A CSV that lost its last rows (cut at a row boundary) reads as a whole file; only this shows it."""
    s = run.summary
    if s.get("final_step") is not None and len(run.metrics) and int(run.metrics.step.iloc[-1]) != s["final_step"]:
        return f"metrics.csv ends at step {int(run.metrics.step.iloc[-1])}, summary.json at step {s['final_step']}"
    if s.get("final_curvature_step") is None:
        return ""
    h = run.hessian[run.hessian.kind != "pre_spike"] if len(run.hessian) else run.hessian
    if not len(h):
        return f"hessian.csv holds no checkpoint, summary.json one at step {s['final_curvature_step']}"
    last = h.sort_values("step").iloc[-1]
    if int(last.step) != s["final_curvature_step"]:
        return (
            f"hessian.csv's last checkpoint is at step {int(last.step)}, summary.json's at step "
            f"{s['final_curvature_step']}"
        )
    for column in FINAL_COLUMNS:
        recorded, logged = s.get(f"final_{column}"), float(last[column])
        recorded = np.nan if recorded is None else float(recorded)  # summary.json writes non-finite as null
        if np.isnan(logged) and not np.isnan(recorded):  # a column older versions did not write (read as empty)
            continue
        if not (np.isclose(recorded, logged, rtol=1e-9, atol=0) or (np.isnan(recorded) and not np.isfinite(logged))):
            return f"hessian.csv's last {column} is {logged:.6g}, summary.json's final one {recorded:.6g}"
    return ""


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
        if isinstance(value, list | dict):  # a value a table can group by
            value = json.dumps(value, default=str)
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


SLUG_MAX = 120  # characters of a file name made from a label (file systems allow 255 bytes)


def slug(label: str) -> str:
    """A file-name-safe form of a run label; a long one cut, with a hash of the whole label to keep it apart.

    >>> slug("lr=0.5 depth=8")
    'lr=0.5_depth=8'
    """
    name = re.sub(r"[^A-Za-z0-9=.,_#-]+", "_", label).strip("_") or "run"
    if len(name) > SLUG_MAX:
        digest = hashlib.sha1(label.encode()).hexdigest()[:10]
        name = f"{name[: SLUG_MAX - 12].rstrip('_')}~{digest}"
    return name


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


def late_checkpoints(hessian: pd.DataFrame) -> pd.DataFrame:
    """The scheduled checkpoints of the last third of a run's steps (from 2/3 of its last scheduled checkpoint's
    step on): where the run sits once progressive sharpening is over."""
    h = hessian[hessian.kind == "scheduled"] if len(hessian) else hessian
    return h[h.step >= 2 / 3 * h.step.max()] if len(h) else h


def late_sharpness_ratio(hessian: pd.DataFrame) -> float:
    """The median sharpness ratio (sharpness / stability threshold) over :func:`late_checkpoints`; NaN without
    such checkpoints."""
    late = late_checkpoints(hessian)
    ratios = pd.to_numeric(late.sharpness_ratio, errors="coerce").dropna() if len(late) else late
    return float(ratios.median()) if len(ratios) else np.nan


def late_means(hessian: pd.DataFrame) -> dict[str, float]:
    """``<m>_late`` and ``<m>_late_std``, the mean and standard deviation of SANE, N_eff, lambda_max and the trace
    over :func:`late_checkpoints`, and ``late_checkpoints``, how many; NaN without such checkpoints (the std also
    with one)."""
    late = late_checkpoints(hessian)
    out: dict[str, float] = {"late_checkpoints": len(late)}
    for name in LATE:
        values = pd.to_numeric(late[name[: -len("_late")]], errors="coerce") if len(late) else pd.Series(dtype=float)
        out[name] = float(values.mean()) if len(values) else np.nan
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
    return out


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """Finished runs (completed, or converged: stopped by their criterion) grouped by every varying key but
    the seed: n_runs, and mean and std (over seeds) of each final quantity; n_diverged counts the group's
    diverged runs."""
    keys = unit_keys(table)
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
            row[f"{q}_mean"], row[f"{q}_std"] = _mean_std(sub[q])
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(column: pd.Series) -> tuple[float, float]:
    """Mean and standard deviation over seeds of a column (as numbers); the std NaN for a single value."""
    values = pd.to_numeric(column, errors="coerce")
    return values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan


SHARPNESS_RUNS = 20  # the most runs drawn in figures/sharpness (the sharpness ratio over training)
BOOTSTRAP = 2000  # resamples of the units behind each correlation's confidence interval
FEW_UNITS = 8  # a correlation over fewer units is marked (few_units) and read with care
FAMILY = "model"  # the key whose values are families: correlations are also given within each (CNNs, MLPs)


def unit_keys(table: pd.DataFrame) -> list[str]:
    """The varying config keys but the seed: what tells one unit (a model, a learning rate) from another."""
    return [k for k in varying_keys(table) if k != "seed"]


def units(table: pd.DataFrame) -> pd.Series:
    """Each run's unit of analysis: runs that differ only in their seed are one unit (a model, a learning rate),
    named by the other varying keys, e.g. ``model=cnn depth=2``; where nothing but the seed varies, each run is its
    own unit."""
    keys = unit_keys(table)
    if not keys:
        return pd.Series([f"run {i}" for i in range(len(table))], index=table.index, dtype=object)
    return pd.Series(combinations(table, keys), index=table.index, dtype=object)


def correlations(
    table: pd.DataFrame, measures=MEASURES, targets=TARGETS, *, seed: int = 0, unit: pd.Series | None = None
) -> pd.DataFrame:
    """Rank correlations between each measure and each target (test loss, test accuracy, generalisation gap)
    across units, not runs: seeds of one model are averaged (:func:`units`), so that a model run with more
    seeds does not count more. Kendall tau-b and Spearman rho of the unit means, their p-values, and 95 %
    intervals from a hierarchical percentile bootstrap (``BOOTSTRAP`` resamples, seeded by ``seed``: the units
    with replacement, then each drawn unit's seeds with replacement, averaged). Over the finished runs where both
    values are finite; NaN with fewer than 3 units. Given for every ``scope``: ``all`` the units, and where the
    runs hold more than one family (``FAMILY``), each family alone (``model=cnn``, ``model=mlp``): a
    correlation across families is mostly the gap between them. ``seeds_min``/``seeds_max`` count the runs per
    unit; ``few_units`` marks correlations over fewer than ``FEW_UNITS`` units. ``unit`` gives each row's unit
    where ``table`` holds columns beside the summary's that :func:`units` would take for config keys."""
    from scipy.stats import kendalltau, spearmanr

    done = table[table.status.isin(FINISHED)]
    unit = units(table) if unit is None else unit
    scopes = [("all", done)]
    if FAMILY in done and done[FAMILY].astype(str).nunique() > 1:
        scopes += [(f"{FAMILY}={f}", sub) for f, sub in done.groupby(done[FAMILY].astype(str), sort=True)]
    stats = ("kendall_tau", "kendall_lo", "kendall_hi", "kendall_p", "spearman_rho", "spearman_lo", "spearman_hi",
             "spearman_p")  # fmt: skip
    rows = []
    for scope, sub in scopes:
        for m, t in ((m, t) for m in measures for t in targets):
            x, y = pd.to_numeric(sub[m], errors="coerce"), pd.to_numeric(sub[t], errors="coerce")
            ok = np.isfinite(x) & np.isfinite(y)
            xs, ys, counts = _per_unit(x[ok], y[ok], unit[ok.index[ok]])
            row = {"scope": scope, "measure": m, "target": t, "n_units": len(counts), "n_runs": int(counts.sum()),
                   "seeds_min": int(counts.min()) if len(counts) else 0,
                   "seeds_max": int(counts.max()) if len(counts) else 0,
                   "few_units": bool(len(counts) < FEW_UNITS), **dict.fromkeys(stats, np.nan)}  # fmt: skip
            xm, ym = np.nanmean(xs, axis=1) if len(xs) else xs, np.nanmean(ys, axis=1) if len(ys) else ys
            if len(counts) >= 3 and len(np.unique(xm)) > 1 and len(np.unique(ym)) > 1:
                tau, tau_p = kendalltau(xm, ym)
                rho, rho_p = spearmanr(xm, ym)
                taus, rhos = bootstrap_rank_correlations(*_hierarchical_resamples(xs, ys, counts, seed))
                (tau_lo, tau_hi), (rho_lo, rho_hi) = (np.nanpercentile(v, [2.5, 97.5]) for v in (taus, rhos))
                row.update(kendall_tau=tau, kendall_lo=tau_lo, kendall_hi=tau_hi, kendall_p=tau_p, spearman_rho=rho,
                           spearman_lo=rho_lo, spearman_hi=rho_hi, spearman_p=rho_p)  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def _per_unit(x: pd.Series, y: pd.Series, unit: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y as (units, most seeds) arrays padded with NaN, in the order of the units' first runs, and the
    number of runs of each unit."""
    order = list(dict.fromkeys(unit))
    counts = np.array([(unit == u).sum() for u in order], dtype=int)
    xs, ys = (np.full((len(order), counts.max() if len(order) else 0), np.nan) for _ in range(2))
    for i, u in enumerate(order):
        xs[i, : counts[i]], ys[i, : counts[i]] = x[unit == u].to_numpy(float), y[unit == u].to_numpy(float)
    return xs, ys, counts


def _hierarchical_resamples(xs, ys, counts, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``BOOTSTRAP`` resamples of the unit means, (BOOTSTRAP, units) each: draw the units with replacement, then
    each drawn unit's runs with replacement (as many as it has), and average them."""
    rng = np.random.default_rng(seed)
    n, most = xs.shape
    drawn = rng.integers(0, n, size=(BOOTSTRAP, n))
    c = counts[drawn][..., None]  # (B, n, 1) runs of each drawn unit
    runs = (rng.random((BOOTSTRAP, n, most)) * c).astype(int)  # (B, n, most) a run of the unit, uniformly
    used = np.arange(most) < c  # the first c draws of each unit
    means = [np.where(used, v[drawn[..., None], runs], 0.0).sum(-1) / c[..., 0] for v in (xs, ys)]
    return means[0], means[1]


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


def combinations(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's values of ``keys`` as ``key=value ...`` (a list, so that a frame without rows works too)."""
    return [" ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, r, strict=True)) for r in df[keys].itertuples(index=False)]


def status_counts(table: pd.DataFrame) -> str:
    return ", ".join(f"{n} {s}" for s, n in table.status.value_counts().items())


LAYER_MEASURES = ("lambda_max", "trace", "n_eff", "sane", "sane_net")  # what layer_profiles averages over seeds


def layer_table(runs: list[Run], labels) -> pd.DataFrame:
    """Every layers.csv row of every run that has one, the run's label in front."""
    tables = [r.layers.assign(run=lab) for r, lab in zip(runs, labels, strict=True) if r.layers is not None]
    tables = [t for t in tables if len(t)]
    if not tables:
        return pd.DataFrame(columns=["run", *LAYER_COLUMNS])
    out = pd.concat(tables, ignore_index=True)
    return out[["run", *LAYER_COLUMNS]]


def final_layers(run: Run) -> pd.DataFrame:
    """The layers' rows of a run's last scheduled checkpoint that measured them (empty without any)."""
    t = run.layers
    if t is None or not len(t):
        return pd.DataFrame(columns=LAYER_COLUMNS)
    t = t[t.kind == "scheduled"]
    return t[t.step == t.step.max()] if len(t) else t


def layer_profiles(runs: list[Run], table: pd.DataFrame) -> pd.DataFrame:
    """Per-layer curvature at the end of training, unit by unit (:func:`units`: runs differing only in their
    seed): for each finished run with layers.csv, its :func:`final_layers`; then per unit and layer the runs
    behind it, the layer's module type and size, and the mean and std over seeds of each of LAYER_MEASURES."""
    unit = units(table)
    finals = [final_layers(r).assign(unit=u) for r, u, status in zip(runs, unit, table.status, strict=True)
              if status in FINISHED]  # fmt: skip
    finals = [f for f in finals if len(f)]
    columns = ["unit", "layer", "module_type", "params", "n_runs",
               *[f"{m}_{s}" for m in LAYER_MEASURES for s in ("mean", "std")]]  # fmt: skip
    if not finals:
        return pd.DataFrame(columns=columns)
    rows = []
    for (u, layer), sub in pd.concat(finals, ignore_index=True).groupby(["unit", "layer"], sort=False):
        row = {"unit": u, "layer": int(layer), "module_type": sub.module_type.iloc[0],
               "params": int(sub.params.iloc[0]), "n_runs": len(sub)}  # fmt: skip
        for m in LAYER_MEASURES:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(sub[m])
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


FULL_SPECTRUM = ("exact", "block_diag", "block_band")  # methods whose spectra files hold every eigenvalue


def sensitivity_table(
    runs: list[Run], labels, rhos=(0.5,), ks=(1,), alphas=(0.5,)
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """N_eff and SANE recomputed from each run's saved spectra, for every ``alphas`` (N_eff) and every (rho, k)
    of ``rhos`` x ``ks`` (SANE), with no retraining; and N_eff at the evidence framework's optimal prior
    precision (:func:`sane_cli.measures.evidence_precision`, on the Hessian of the summed loss over the
    ``subset`` examples the spectrum is of; ``prior_precision_evidence`` is that gamma). Each at the run's last
    scheduled checkpoint and, as ``<column>_late``, averaged over :func:`late_checkpoints` (at large learning
    rates one end-point Hessian is a random phase of an oscillation). The run's own eig_mode is kept. Runs
    without a full spectrum (lanczos, slq) or whose spectrum cannot be read have NaN, and runs written before
    0.7 (no weight_norm_sq) have no evidence values.

    Returns (one row per run: label, run, status, step, method, and a column per measure and setting; the
    measure columns; a message per run left out)."""
    columns = [f"n_eff[alpha={a:g}]" for a in alphas] + [f"sane[rho={r:g},k={k}]" for r in rhos for k in ks]
    columns += ["n_eff_evidence", "prior_precision_evidence"]
    late_columns = [f"{c}_late" for c in columns]
    rows, notes = [], []
    for run, label in zip(runs, labels, strict=True):
        row = {"label": label, "run": str(run.path), "status": run_status(run),
               **dict.fromkeys(columns + late_columns, np.nan)}  # fmt: skip
        h = run.hessian[run.hessian.kind == "scheduled"] if len(run.hessian) else run.hessian
        if not len(h):
            rows.append(row)
            continue
        last = h.sort_values("step").iloc[-1]
        row.update(step=int(last.step), method=last.method)
        if last.method not in FULL_SPECTRUM:
            notes.append(f"{run.path}: its spectrum is not complete ({last.method}); no sensitivity values")
            rows.append(row)
            continue
        mode = run.config.get("hessian", {}).get("eig_mode", "abs")
        try:
            late = {int(c.step): _recomputed(run, c, mode, alphas, rhos, ks) for _, c in late_checkpoints(h).iterrows()}
            # the last checkpoint is among the late ones: its spectrum is read once
            row.update(late.get(int(last.step)) or _recomputed(run, last, mode, alphas, rhos, ks))
        except UsageError as e:
            notes.append(str(e))
            rows.append(row)
            continue
        row.update({f"{c}_late": float(np.mean([v[c] for v in late.values()])) for c in columns})
        rows.append(row)
    measures = columns[:-1] + late_columns[:-1]
    return pd.DataFrame(rows), measures, notes


def _recomputed(run: Run, checkpoint: pd.Series, mode: str, alphas, rhos, ks) -> dict[str, float]:
    """:func:`sensitivity_table`'s columns from the spectrum saved at one checkpoint."""
    from .measures import evidence_precision, n_eff, sane

    values = run.spectrum(int(checkpoint.step))[0]
    out = {f"n_eff[alpha={a:g}]": n_eff(values, a, mode) for a in alphas}
    for r, k in ((r, k) for r in rhos for k in ks):
        out[f"sane[rho={r:g},k={k}]"] = sane(values, r, k, mode) if k <= len(values) else np.nan
    n = int(checkpoint.subset)
    gamma = evidence_precision(values, n, float(checkpoint.get("weight_norm_sq", np.nan)), mode)
    out["prior_precision_evidence"] = gamma
    out["n_eff_evidence"] = n_eff(values, gamma / n, mode) if np.isfinite(gamma) else np.nan
    return out


# per spike, what it does beyond its matched null (and beyond the unmatched one): the formula of each, over
# basins.csv's columns
SPIKE_EFFECTS = {
    "excess_flattening": "log(flattening) - log(matched_flattening)",  # < 0: flattens more than the null
    "excess_turn": "matched_similarity - similarity",  # > 0: the top eigenvectors turn more than the null's
    "excess_distance": "spectrum_distance - matched_distance",  # > 0: the spectrum moves more than the null's
    "excess_flattening_unmatched": "log(flattening) - log(null_flattening)",
    "excess_turn_unmatched": "null_similarity - similarity",
}
_TERM = re.compile(r"(log\()?([a-z_]+)\)?")


def spike_effects(basins: pd.DataFrame) -> pd.DataFrame:
    """One row per spike with a checkpoint pair across it (``basins.csv``'s rows with a similarity): run,
    spike_step and each of ``SPIKE_EFFECTS`` (NaN where its null has no pairs, or the column is missing)."""
    similarity = pd.to_numeric(basins["similarity"], errors="coerce") if "similarity" in basins else None
    spikes = basins[similarity.notna()] if similarity is not None else basins.iloc[0:0]
    out = pd.DataFrame({"run": spikes.get("run"), "spike_step": spikes.get("spike_step")}).reset_index(drop=True)

    def term(text: str) -> np.ndarray:
        log, name = _TERM.fullmatch(text.strip()).groups()
        values = pd.to_numeric(spikes[name], errors="coerce") if name in spikes else pd.Series(np.nan, spikes.index)
        values = values.to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values) if log else values

    for name, formula in SPIKE_EFFECTS.items():
        left, right = formula.split(" - ")
        out[name] = term(left) - term(right)
    return out


def spike_inference(basins: pd.DataFrame, table: pd.DataFrame, *, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run-level inference on what spikes do beyond their null: the spikes of one run are not independent, so
    each run counts once, by its median over its spikes of each of ``SPIKE_EFFECTS``; then per scope (``all``
    runs, and each unit of :func:`units` where there are several) the mean over runs of those medians with a
    95 % percentile bootstrap interval over runs (``BOOTSTRAP`` resamples, seeded by ``seed``), the number of
    runs and spikes behind it and the share of runs whose median is above 0. Finished runs only.

    Returns (one row per run: run, unit, n_spikes and each effect's median; one row per scope and effect)."""
    effects = spike_effects(basins)
    unit_of = dict(zip(table.label, units(table), strict=True))
    table = table[table.status.isin(FINISHED)]  # a run still going (or stopped) has not all its spikes
    per_run = []
    for label in table.label:
        mine = effects[effects.run == label]
        row = {"run": label, "unit": unit_of[label], "n_spikes": len(mine)}
        for name in SPIKE_EFFECTS:
            values = mine[name].dropna()
            row[f"{name}_spikes"] = len(values)
            row[name] = float(values.median()) if len(values) else np.nan
        per_run.append(row)
    columns = ["run", "unit", "n_spikes", *(c for name in SPIKE_EFFECTS for c in (f"{name}_spikes", name))]
    per_run = pd.DataFrame(per_run, columns=columns)  # columns also without a finished run
    scopes = [("all", per_run)]
    if per_run.unit.nunique() > 1:
        scopes += list(per_run.groupby("unit", sort=False))
    rows = []
    for scope, sub in scopes:
        for name in SPIKE_EFFECTS:
            values = sub[name].dropna().to_numpy(float)
            row = {"scope": scope, "effect": name, "formula": SPIKE_EFFECTS[name], "n_runs": len(values),
                   "n_spikes": int(sub.loc[sub[name].notna(), f"{name}_spikes"].sum()), "mean": np.nan,
                   "lo": np.nan, "hi": np.nan, "share_positive": np.nan}  # fmt: skip
            if len(values):
                means = values[np.random.default_rng(seed).integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
                lo, hi = np.percentile(means, [2.5, 97.5])
                row.update(mean=values.mean(), lo=lo, hi=hi, share_positive=float((values > 0).mean()))
            rows.append(row)
    return per_run, pd.DataFrame(rows)
