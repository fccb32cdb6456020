"""The report's tables, from run folders as read by sane_cli.records: one row per run (:func:`summary_table`),
the labels and file names of runs, runs grouped over seeds (:func:`group_table`) and into units
(:func:`units`), the late-training means, and the per-layer profiles. The statistics on them are in
sane_cli.statistics, the sensitivity table in sane_cli.sensitivity. Imports neither torch nor matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UsageError
from .records import (
    FINAL_COLUMNS,
    FINISHED,
    LAYER_COLUMNS,
    LAYER_MEASURES,
    REPORT_KEYS,
    VALUE_COLUMNS,
    Run,
    config_value,
    find_runs,
    is_locked,
    load_run,
    no_effect,
)

log = logging.getLogger(__name__)

# the shortcuts for keys of REPORT_KEYS (lr for optim.lr, depth, width) and the optimiser's default step size:
# each repeats another key
REPEATS = {"lr", "depth", "width", "optim.default_lr"}
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
        found, unreadable = find_runs(root), []
        for _ in os.walk(root, onerror=unreadable.append):  # folders that cannot be listed hide their runs
            pass
        for e in unreadable:
            note = f"cannot read {e.filename} ({e.strerror}); any runs in it are left out"
            log.warning("skipping: %s", note)
            skipped.append(note)
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
        row.update({k: config_value(run.config, key) for k, (key, _) in REPORT_KEYS.items()})
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
    """Every config value under its dotted key (``hessian.probes``), but those of REPORT_KEYS under their
    short name (``lr``), and without keys that do not change results (device, data folders) or duplicate
    another (the ``lr``, ``depth``, ``width`` shortcuts). A null value is the string ``null``, a value of its own
    (``hessian.subset`` null, the whole training set, against 256), where a key a run lacks stays missing."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
    dotted = {key: k for k, (key, _) in REPORT_KEYS.items()}
    out = {}
    for key, value in flat.items():
        if key in REPEATS or no_effect(key) or key.startswith(("hydra.", "experiment")):
            continue
        if isinstance(value, list | dict):  # a value a table can group by
            value = json.dumps(value, default=str)
        out[dotted.get(key, key)] = "null" if value is None else value
    return out


def varying_keys(table: pd.DataFrame) -> list[str]:
    """The config keys that take more than one value across the runs: those of REPORT_KEYS first (lr,
    depth, width, dataset, optimiser, seed, ...), then any other (dotted, e.g. ``hessian.probes``)."""
    config_columns = list(REPORT_KEYS) + sorted(c for c in table.columns if "." in c)
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


def combinations(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's values of ``keys`` as ``key=value ...`` (a list, so that a frame without rows works too)."""
    return [" ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, r, strict=True)) for r in df[keys].itertuples(index=False)]


def status_counts(table: pd.DataFrame) -> str:
    return ", ".join(f"{n} {s}" for s, n in table.status.value_counts().items())


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
