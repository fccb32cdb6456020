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
                         and the generalisation gap across units (runs differing only in their seed are
                         one unit, their seeds averaged), with p-values, hierarchical bootstrap 95 %
                         intervals (_lo, _hi), the units and runs behind each (few_units: under 8); over
                         all units (scope all) and within each model family (scope model=cnn, ...)
    checkpoints.csv      every curvature checkpoint of every run (its hessian.csv rows, plus the run)
    layers.csv           every layer of every checkpoint of every run (its layers.csv rows, plus the run)
    layer_profiles.csv   each layer's curvature at the end of training, unit by unit (the mean and std over
                         seeds, sane_cli.tables.layer_profiles)
    basins.csv           loss basins of every run (sane_cli.basins.BASIN_COLUMNS, plus the run)
    spikes.csv           what spikes do beyond their null, run by run (each run's median over its spikes;
                         spikes_per_run.csv), as the mean over runs with a bootstrap interval over runs
    figures/             lr_comparison and depth_comparison (when lr or depth vary); sharpness (the
                         sharpness ratio of every run over training, up to 20 runs); correlations (each
                         measure against test loss and accuracy, unit by unit, with the seeds' range);
                         layer_profile (each layer's final curvature, a line per unit, up to 20)
    runs/<label>/        dynamics, spectra, layers (with layers.csv) and (with spikes) basins figures;
                         basins.csv; similarity.csv (the label as a file name, made unique)

Run folders are only read, and the output folder may hold none of them. Diverged runs are listed and
marked in the figures, never dropped; unreadable run folders are skipped with a warning naming each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import html
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .basins import BASIN_COLUMNS
from .checks import path_fits
from .errors import UsageError
from .records import FINISHED, STATUSES, Run, find_runs, load_run
from .sensitivity import sensitivity_table
from .statistics import BOOTSTRAP, FEW_UNITS, correlations, spike_inference
from .tables import (
    CHOOSABLE,
    MEASURES,
    SHARPNESS_RUNS,
    collect,
    combinations,
    group_table,
    layer_profiles,
    layer_table,
    run_status,
    status_counts,
    summary_table,
    unique_slugs,
    units,
    varying_keys,
)

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")


@dataclass
class Options:
    """What to draw: figure formats and the curvature measures in the comparisons and correlations."""

    formats: tuple[str, ...] = ("png",)
    measures: tuple[str, ...] = MEASURES
    jobs: int | None = None  # processes for the per-run figures; None: one per CPU
    status: tuple[str, ...] | None = None  # only runs of these statuses (run_status); None: every run
    # the settings N_eff and SANE are recomputed with from the saved spectra (sensitivity.csv)
    sane_rho: tuple[float, ...] = (0.1, 0.5, 1.0)
    sane_k: tuple[int, ...] = (1, 5)
    neff_alpha: tuple[float, ...] = (0.05, 0.5, 5.0)


@dataclass
class Tables:
    """What the report is drawn and written from: the runs, their tables, and what report.html tells besides."""

    paths: list[Path]  # the folders the runs were collected below
    out: Path  # the report's folder
    runs: list[Run]
    table: pd.DataFrame  # summary_table, one row per run
    keys: list[str]  # the config keys that vary
    groups: pd.DataFrame
    corr: pd.DataFrame
    sens_corr: pd.DataFrame  # the correlations of the recomputed measures (sensitivity)
    options: Options
    profiles: pd.DataFrame  # layer_profiles: each layer's final curvature, unit by unit
    per_run: list[tuple]  # _per_run's results, in the order of runs
    skipped: list[str]  # runs left out or drawn in part, and why


def _comparison(t: Tables, x: str, panels: list[str]):
    """Final values against ``x`` (lr or depth), a line per value of the other varying keys, but those that x
    determines (e.g. ``hessian.every`` set per learning rate: one value per x draws no line of its own); None
    unless x varies."""
    from . import plots

    if x not in t.keys or not len(t.groups):
        return None
    others = [k for k in t.keys if k not in (x, "seed") and not _determined_by(t.table, k, x)]
    g, d = t.groups.copy(), t.table[t.table.status == "diverged"].copy()
    line = None
    if others:
        line = others[0] if len(others) == 1 else "config"
        if line == "config":  # one line per combination of the other keys
            g[line], d[line] = combinations(g, others), combinations(d, others)
    if g.get("preconditioned_sharpness_mean", pd.Series(dtype=float)).notna().any():
        panels = [*panels, "preconditioned_sharpness"]  # Adam's sharpness, against its threshold
    return plots.comparison(g, x, line, [p for p in panels if f"{p}_mean" in g], d)


def _determined_by(table: pd.DataFrame, key: str, x: str) -> bool:
    """Whether every value of ``x`` comes with a single value of ``key`` across the runs."""
    return bool((table[[x, key]].astype(str).groupby(x)[key].nunique() <= 1).all())


def _correlations(t: Tables):
    """Each measure against test loss and accuracy, a point per finished run; None below 3 such runs."""
    from . import plots

    finished = t.table[t.table.status.isin(FINISHED)]
    measures = [m for m in t.options.measures if pd.to_numeric(finished[m], errors="coerce").notna().sum() >= 3]
    if len(finished) < 3 or not measures:
        return None
    colour = "model" if "model" in t.keys else None
    return plots.correlations(finished, t.corr, measures, ("test_loss", "test_acc"), units(t.table), colour)


def _sharpness(t: Tables):
    """Every run's sharpness ratio over training; None beyond SHARPNESS_RUNS runs (no longer readable)."""
    from . import plots

    measured = [(lab, r.hessian) for r, lab in zip(t.runs, t.table.label, strict=True) if len(r.hessian)]
    return plots.sharpness(measured) if 0 < len(measured) <= SHARPNESS_RUNS else None


def _layer_profile(t: Tables):
    """Each layer's final curvature against its place in the net, a line per unit; None without layers.csv
    or beyond SHARPNESS_RUNS units."""
    from . import plots

    lines = t.profiles.unit.nunique() if len(t.profiles) else 0
    return plots.layer_profile(t.profiles, "unit") if 0 < lines <= SHARPNESS_RUNS else None


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the whole report: its file in figures/, its heading and caption in report.html, and how it
    is drawn (None: not drawn for these runs)."""

    name: str
    title: str
    caption: str
    draw: Callable[[Tables], object]


_BY_SEED = "Final values; mean and standard deviation over seeds; crosses on the x axis mark diverged runs."
FIGURES = [  # in the order of report.html; a new figure is one entry
    ReportFigure("lr_comparison", "Learning-rate comparison", _BY_SEED,
                 lambda t: _comparison(t, "lr", [*t.options.measures, "test_acc", "gen_gap"])),
    ReportFigure("depth_comparison", "Depth comparison", _BY_SEED,
                 lambda t: _comparison(t, "depth", [*t.options.measures, "test_acc"])),
    ReportFigure("correlations", "Measures against test loss and accuracy",
                 "Final values, a point per unit (the mean over its seeds; bars span its seeds); the titles give "
                 "Spearman's rho across units with its 95 % bootstrap interval (the table below).", _correlations),
    ReportFigure("sharpness", "Sharpness over training",
                 "Each run's sharpness over its stability threshold at every scheduled checkpoint (lambda_max of "
                 "the training loss; for Adam, of P^-1 H); 1 is the edge of stability. sharpness_ratio_late in "
                 "summary.csv is its median over the last third of the run.", _sharpness),
    ReportFigure("layer_profile", "Curvature by layer",
                 "Each layer's diagonal block of the Hessian at the last scheduled checkpoint of each finished run, "
                 "a line per unit (mean and standard deviation over its seeds): lambda_max, trace, and SANE at the "
                 "block's own scale and at the whole net's (layer_profiles.csv; every checkpoint in layers.csv).",
                 _layer_profile),
]  # fmt: skip


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
    if run.layers is not None and (run.layers.kind == "scheduled").any():
        figures["layers"] = lambda: plots.layers(run, label)
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
    path_fits(out, "-o")
    _check_out(out, runs, paths)
    earlier = _check_earlier_report(out)
    work = _work_folder(out)
    try:
        _write(paths, work, runs, skipped, options)
        _swap_in(work, out)
        if earlier:
            log.info("replaced the earlier report in %s (%s)", out, ", ".join(earlier))
    except OSError as e:  # a full disk, a folder made read-only meanwhile: nothing half-written is left
        shutil.rmtree(work, ignore_errors=True)
        where = f": {e.filename}" if e.filename else ""
        raise UsageError(f"cannot write the report to {out} ({e.strerror}{where}); nothing of it was left "
                         "there and an earlier report there is untouched: free some space, or choose another "
                         "folder (-o)") from None  # fmt: skip
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("wrote %s in %.1f s", out / "report.html", time.perf_counter() - start)
    return out / "report.html"


def _work_folder(out: Path) -> Path:
    """A new folder beside ``out`` that the report is written into before it takes ``out``'s place, so that a
    report cut short (a full disk, Ctrl-C) leaves an earlier one whole, and two reports into one folder at once
    each write their own (the later one stays)."""
    parent = out.absolute().parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"cannot write the report to {out}: {blocking} is a file, not a folder; choose another "
                         "folder with -o")  # fmt: skip
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise UsageError(f"cannot write the report to {out}: {parent} is not a writable folder ({e.strerror}); "
                         "choose another folder with -o") from None  # fmt: skip


def _swap_in(work: Path, out: Path) -> None:
    """``work`` renamed to ``out``, an earlier report there moved aside first and removed after. Two reports
    finishing at once: each tries again until its rename holds (the later one stays)."""
    if os.path.ismount(out):  # a mount point is not renamed: its contents are replaced instead
        _replace_contents(work, out)
        return
    for _ in range(20):
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            with contextlib.suppress(FileNotFoundError):  # another report moved it aside meanwhile
                os.rename(out, old)
        try:
            os.rename(work, out)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # another report took the place between the two renames
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, "other reports kept replacing it", str(out))


def _replace_contents(work: Path, out: Path) -> None:
    """``out``'s earlier report files removed and ``work``'s moved in (``out`` a mount point)."""
    for name in REPORT_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for path in work.iterdir():
        shutil.move(str(path), str(out / path.name))
    work.rmdir()


def _write(paths: list[Path], out: Path, runs: list[Run], skipped: list[str], options: Options) -> None:
    """Every file of the report into ``out``."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    notes = []
    table = summary_table(runs, notes)
    for note in notes:
        log.warning("%s", note)
    skipped += notes
    keys = varying_keys(table)
    log.info("%d runs (%s); varying: %s", len(runs), status_counts(table), ", ".join(keys) or "nothing")

    per_run = _all_per_run(runs, table, out, options)
    for *_, warning in per_run:
        if warning:
            log.warning("%s", warning)
            skipped.append(warning)
    tables = [t.assign(run=lab) for lab, t, *_ in per_run if len(t)]
    basins = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["run", *BASIN_COLUMNS])
    basins = basins[["run", *[c for c in basins.columns if c != "run"]]]
    basins.to_csv(out / "basins.csv", index=False)
    checkpoints = [r.hessian.assign(run=lab) for r, lab in zip(runs, table.label, strict=True) if len(r.hessian)]
    checkpoints = pd.concat(checkpoints, ignore_index=True) if checkpoints else pd.DataFrame(columns=["run", "step"])
    checkpoints[["run", *[c for c in checkpoints.columns if c != "run"]]].to_csv(out / "checkpoints.csv", index=False)
    layer_table(runs, table.label).to_csv(out / "layers.csv", index=False)
    profiles = layer_profiles(runs, table)
    profiles.to_csv(out / "layer_profiles.csv", index=False)
    spikes_per_run, spikes = spike_inference(basins, table)
    spikes_per_run.to_csv(out / "spikes_per_run.csv", index=False)
    spikes.to_csv(out / "spikes.csv", index=False)
    table["spikes"] = [len(s) for _, _, s, *_ in per_run]
    table.to_csv(out / "summary.csv", index=False)
    groups = group_table(table)
    groups.to_csv(out / "groups.csv", index=False)
    corr = correlations(table, options.measures)
    corr.to_csv(out / "correlations.csv", index=False)
    sens, sens_corr = _sensitivity(runs, table, options, skipped)
    sens.to_csv(out / "sensitivity.csv", index=False)
    sens_corr.to_csv(out / "sensitivity_correlations.csv", index=False)

    context = Tables(paths, out, runs, table, keys, groups, corr, sens_corr, options, profiles, per_run, skipped)
    drawn = {}  # figure -> its files
    for figure in FIGURES:
        fig = figure.draw(context)
        if fig is not None:
            drawn[figure] = _save(fig, out / "figures" / figure.name, options.formats)
    (out / "report.html").write_text(_html(context, drawn))


def _sensitivity(runs: list[Run], table: pd.DataFrame, options: Options, skipped: list[str]):
    """N_eff and SANE of each run recomputed from its saved spectrum for every setting of ``options`` (and at
    the evidence-optimal prior precision), and their correlations with test loss, accuracy and the
    generalisation gap across finished runs, as for the logged measures."""
    sens, measures, notes = sensitivity_table(runs, table.label, options.sane_rho, options.sane_k, options.neff_alpha)
    for note in notes:
        log.warning("sensitivity: %s", note)
    skipped += [f"sensitivity: {note}" for note in notes]
    merged = table.merge(sens[["label", *measures]], on="label", how="left")  # in table's order
    # the units are the summary's: the recomputed columns (with dots in their names) are no config keys
    return sens, correlations(merged, measures, unit=units(table).set_axis(merged.index))


def _check_out(out: Path, runs: list[Run], paths: list[Path]) -> None:
    """The output folder lies inside no run folder and holds none (damaged ones included)."""
    for folder in sorted({*(r.path for r in runs), *(f for root in paths for f in find_runs(root))}):
        if out.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"the output folder {out} lies inside the run folder {folder}; choose another (-o)")
        if folder.resolve().is_relative_to(out.resolve()):
            raise UsageError(
                f"the output folder {out} holds run folders ({folder}); the report's files would mix with them: "
                f"write it to {out / 'report'} or another folder (-o)"
            )


# what a report writes into its folder: an earlier report's files are replaced as a whole, never mixed
REPORT_FILES = ("report.html", "figures", "runs", "summary.csv", "groups.csv", "correlations.csv", "basins.csv",
                "checkpoints.csv", "layers.csv", "layer_profiles.csv", "spikes.csv", "spikes_per_run.csv",
                "sensitivity.csv", "sensitivity_correlations.csv")  # fmt: skip


def _check_earlier_report(out: Path) -> list[str]:
    """``out`` can take a report: new, empty, or holding an earlier report, which is replaced as a whole (its
    entries returned, for the log) so that none of its files (a figure of a run no longer there) passes for this
    report's.

    Raises:
        UsageError: ``out`` is a file, or a folder holding files a report does not write.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"the output folder {out} is a file; choose a folder (-o), new or holding an earlier report")
    if not out.exists():
        return []
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in REPORT_FILES]
    if foreign:
        raise UsageError(
            f"the output folder {out} holds files a report does not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder (-o), or one holding an earlier "
            "report"
        )
    return entries


def _all_per_run(runs: list[Run], table: pd.DataFrame, out: Path, options: Options) -> list[tuple]:
    """:func:`_per_run` for every run, in ``options.jobs`` worker processes (default one per CPU)."""
    jobs = [
        (str(r.path), lab, str(out / "runs" / folder), options.formats)
        for r, lab, folder in zip(runs, table.label, unique_slugs(table.label), strict=True)
    ]
    n_workers = min(options.jobs or os.cpu_count() or 1, len(jobs))
    bar = dict(total=len(jobs), desc="per-run figures", unit="run", disable=None)  # a bar on a terminal only
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers, mp_context=get_context("fork")) as pool:
            return list(tqdm(pool.map(_per_run, jobs), **bar))
    return [_per_run(j) for j in tqdm(jobs, **bar)]


def _html(t: Tables, drawn: dict) -> str:
    """report.html: plain HTML with relative links to the ``drawn`` figures (figure -> its files), readable
    offline."""
    from omegaconf import OmegaConf

    paths, out, runs, table, keys, skipped = t.paths, t.out, t.runs, t.table, t.keys, t.skipped

    def img(files: list[str], alt: str) -> str:
        pngs = [f for f in files if f.endswith(".png")]
        if pngs:
            return f'<img src="{html.escape(os.path.relpath(pngs[0], out))}" alt="{html.escape(alt)}">'
        return " ".join(f'<a href="{html.escape(os.path.relpath(f, out))}">{html.escape(alt)} (pdf)</a>' for f in files)

    def tbl(df: pd.DataFrame) -> str:
        text = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")
        for status in ("diverged", "failed", "interrupted", "running", "stopped"):  # runs that did not complete
            text = text.replace(f"<td>{status}</td>", f'<td class="bad">{status}</td>')
        return f'<div class="wide">{text}</div>'  # a table wider than the page scrolls in its own box

    cols = ["label", "status", *keys, "n_params", "method", "steps_done", "train_loss", "test_loss", "test_acc",
            "gen_gap", "lambda_max", "stability_threshold", "sharpness_ratio", "hessian_on", "sane", "n_eff", "trace",
            "spikes"]  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sane-report</title><style>",
        "body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222;overflow-wrap:anywhere}",
        "img{max-width:100%} table.t{border-collapse:collapse;font-size:12px;margin:0.5em 0}",
        "div.wide{max-width:100%;overflow-x:auto} table.t td,table.t th{overflow-wrap:normal;white-space:nowrap}",
        "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}",
        "td.bad{color:#b00;font-weight:bold} details{margin:0.4em 0}",
        "pre{background:#f6f6f6;padding:0.5em;font-size:11px;overflow-x:auto}",
        "</style></head><body>",
        "<h1>sane-report</h1>",
        f"<p>{len(runs)} runs below {html.escape(', '.join(map(str, paths)))} ({status_counts(table)}); "
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
    for figure, files in drawn.items():
        parts += [f"<h2>{figure.title}</h2>", f"<p>{figure.caption}</p>", img(files, figure.title)]
        if figure.name == "layer_profile":  # its numbers beside it
            parts.append(tbl(t.profiles))
    parts += [
        "<h2>Correlations</h2><p>Across units (finished runs that differ only in their seed are one unit, their "
        "values averaged), over all units and within each model family (scope); _lo and _hi bound the 95 % "
        f"interval (hierarchical percentile bootstrap: units, then seeds within a unit, {BOOTSTRAP} resamples); "
        f"few_units: fewer than {FEW_UNITS} units behind it.</p>", tbl(t.corr),
        "<h2>Sensitivity</h2><p>The same correlations for N_eff and SANE recomputed from each run's saved spectrum "
        "(its last scheduled checkpoint; _late: the mean over the last third of its checkpoints) at other settings "
        "of alpha, rho and k, and N_eff at the evidence "
        "framework's optimal prior precision (n_eff_evidence); the values per run are in sensitivity.csv.</p>",
        tbl(t.sens_corr[["scope", "measure", "target", "n_units", "spearman_rho", "spearman_lo", "spearman_hi",
                       "kendall_tau"]]),
        "<h2>Groups</h2><p>Completed runs that differ only in their seed.</p>", tbl(t.groups),
        "<h2>Per run</h2>",
    ]  # fmt: skip
    for run, (label, basins, _, files, _) in zip(runs, t.per_run, strict=True):
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
        "--measures",
        default=",".join(MEASURES),
        help=f"curvature measures to compare, among {','.join(CHOOSABLE)} (default {','.join(MEASURES)})",
    )
    parser.add_argument("-j", "--jobs", type=int, default=None, help="processes for per-run figures (default: CPUs)")
    parser.add_argument(
        "--status", default=None, help="only runs of these statuses, comma separated (e.g. converged; default: all)"
    )
    for flag, kind, default in (("--sane-rho", "numbers > 0", "0.1,0.5,1"), ("--sane-k", "integers >= 1", "1,5"),
                                ("--neff-alpha", "numbers > 0", "0.05,0.5,5")):  # fmt: skip
        parser.add_argument(flag, default=default, help=f"sensitivity: {kind}, comma separated (default {default})")
    args = parser.parse_args(argv)
    for path in args.paths:
        path_fits(path, "PATH")
    settings = {
        "sane_rho": _numbers("--sane-rho", args.sane_rho, float),
        "sane_k": _numbers("--sane-k", args.sane_k, int),
        "neff_alpha": _numbers("--neff-alpha", args.neff_alpha, float),
    }
    status = None if args.status is None else tuple(x.strip() for x in args.status.split(",") if x.strip())
    allowed = (*STATUSES, "stopped")
    if status is not None and (not status or any(x not in allowed for x in status)):
        raise UsageError(f"--status={args.status!r} is invalid: choose among {', '.join(allowed)}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip())
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--format={args.format!r} is invalid: use png, pdf or png,pdf")
    if not measures or any(m not in CHOOSABLE for m in measures):
        raise UsageError(f"--measures={args.measures!r} is invalid: choose among {', '.join(CHOOSABLE)}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs={args.jobs} is invalid: must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    page = report(args.paths, args.out, Options(formats, measures, args.jobs, status, **settings))
    print(f"wrote {page}")
    return page


def _numbers(flag: str, text: str, kind: type) -> tuple:
    """A comma-separated list of positive numbers (``kind`` int: at least 1), or a UsageError naming the flag."""
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        what = "integers >= 1" if kind is int else "numbers > 0"
        raise UsageError(f"{flag}={text!r} is invalid: give {what}, comma separated")
    return values
