"""The report's figures, in one style: sized for a paper column or page, learning rate on a log axis,
the optimiser's stability threshold (2/lr for plain GD) always drawn beside lambda_max. Every function
returns a matplotlib Figure and draws nothing on the screen (the Agg backend).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "legend.framealpha": 0.85,  # legends inside axes sit on a light box over the lines
    "legend.edgecolor": "none",
}
LABELS = {
    "sane": "SANE",
    "n_eff": r"$N_\mathrm{eff}$",
    "lambda_max": r"$\lambda_\mathrm{max}$",
    "preconditioned_sharpness": r"$\lambda_\mathrm{max}(P^{-1}H)$ (Adam)",
    "trace": r"tr $H$",
    "log_evidence": "log evidence (Laplace)",
    "sane_late": "SANE, mean of the last third",
    "n_eff_late": r"$N_\mathrm{eff}$, mean of the last third",
    "lambda_max_late": r"$\lambda_\mathrm{max}$, mean of the last third",
    "trace_late": r"tr $H$, mean of the last third",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "gen_gap": "generalisation gap\n(test - train loss)",
    "lr": r"learning rate $\eta$",
    "depth": "depth (linear layers)",
}
SPIKE = dict(color="tab:red", lw=0.8, ls=":", alpha=0.8)


def style():
    """The context every figure is drawn in."""
    return plt.rc_context(STYLE)


def _label(key: str) -> str:
    return LABELS.get(key, key)


def comparison(
    groups: pd.DataFrame,
    x: str,
    line_key: str | None,
    panels: Sequence[str],
    diverged: pd.DataFrame | None = None,
):
    """Final measures against ``x`` (lr on a log axis, or depth), a line per value of ``line_key``, seed
    means with their standard deviation as error bars; lambda_max panels carry the optimiser's stability
    threshold (``stability_threshold_mean``, 2/lr for plain GD), in each line's colour where lines differ;
    for groups whose threshold bounds a preconditioned sharpness (Adam's) it is drawn on the
    ``preconditioned_sharpness`` panel instead.
    ``groups`` has the columns ``x``, ``line_key``, and ``<panel>_mean``, ``<panel>_std`` per panel;
    ``diverged`` (runs with columns ``x`` and ``line_key``) is marked with crosses on the x axis."""
    with style():
        n = len(panels)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.1 * rows), squeeze=False)
        lines = [None] if line_key is None else sorted(groups[line_key].dropna().unique(), key=_order)
        for ax, panel in zip(axes.flat, panels, strict=False):
            thresholds = []  # (colour, x values, the stability threshold at each) of every line
            for i, value in enumerate(lines):
                sub = groups if value is None else groups[groups[line_key] == value]
                sub = sub.sort_values(x)
                label = None if value is None else f"{line_key}={value:g}" if _is_number(value) else f"{value}"
                ax.errorbar(
                    sub[x], sub[f"{panel}_mean"], yerr=sub[f"{panel}_std"].fillna(0), marker="o", capsize=2,
                    color=f"C{i}", label=label,
                )  # fmt: skip
                if diverged is not None and len(diverged):
                    d = diverged if value is None else diverged[diverged[line_key] == value]
                    if len(d):  # (an empty unclipped line would break tight_layout)
                        ax.plot(d[x], np.zeros(len(d)), "x", color=f"C{i}", ms=6, mew=1.5, clip_on=False,
                                transform=ax.get_xaxis_transform())  # fmt: skip
                sharpness = panel in ("lambda_max", "preconditioned_sharpness")
                if sharpness and "stability_threshold_mean" in sub and len(sub):
                    t = sub["stability_threshold_mean"].to_numpy(float)
                    # each threshold on the sharpness it bounds: Adam's on lambda_max(P^-1 H)
                    pre = sub.get("preconditioned_sharpness_mean", pd.Series(np.nan, sub.index)).notna().to_numpy()
                    t = np.where(pre == (panel == "preconditioned_sharpness"), t, np.nan)
                    if np.isfinite(t).any():
                        thresholds.append((f"C{i}", sub[x].to_numpy(), t))
            if thresholds:
                _thresholds(ax, thresholds, groups[f"{panel}_mean"].to_numpy(float), x)
            if x == "depth":
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if x == "lr":
                ax.set_xscale("log")
                values = np.unique(pd.to_numeric(groups[x], errors="coerce").dropna().to_numpy(float))
                if 0 < len(values) <= 8:  # each learning rate labelled as given, and no minor labels to crowd them
                    ax.set_xticks(values, [f"{v:g}" for v in values])
                else:  # plain numbers (0.01, 1, 2), never 10^0 or 2x10^0
                    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(_label(x))
            ax.set_ylabel(_label(panel))
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        top = _shared_legend(fig, axes, n, diverged is not None and len(diverged) > 0)
        fig.tight_layout(rect=(0, 0, 1, top))
        return fig


def _thresholds(ax, thresholds: list[tuple[str, np.ndarray, np.ndarray]], means: np.ndarray, x: str) -> None:
    """The stability thresholds (colour, x values, threshold at each) of a sharpness panel: a dashed line each,
    in its line's colour where they differ; the y axis logarithmic where the values span decades."""
    # c / lr is a straight line on log axes, so joining the thresholds at the measured lr is exact
    coloured = len({tuple(np.round(np.nan_to_num(t, nan=-1.0), 9)) for _, _, t in thresholds}) > 1
    for colour, xs, t in thresholds:
        colour = colour if coloured else "k"
        if x == "lr":
            ax.plot(xs, t, color=colour, ls="--", lw=1)
        else:
            ax.axhline(float(np.nanmean(t)), color=colour, ls="--", lw=1)
    label = "stability threshold" + (" (line colour)" if coloured else "")
    ax.plot([], [], "k--", lw=1, label=label)
    shown = np.concatenate([means, *[t for *_, t in thresholds]])
    if x == "lr":  # (ticks at 1, 2, 5 x 10^n where the axis spans less than two decades)
        v = shown[np.isfinite(shown) & (shown > 0)]
        _log_y(ax, dense=len(v) > 0 and v.max() / v.min() < 100)
    else:
        _log_if_wide(ax, shown)


def _shared_legend(fig, axes, n: int, diverged: bool) -> float:
    """One legend above the panels for every line of the first ``n`` axes (and the diverged crosses); returns
    the top of the area left for the panels."""
    rows, cols = axes.shape
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if diverged:
        handles.append(plt.Line2D([], [], marker="x", ls="", color="0.3", ms=6, mew=1.5))
        labels.append("diverged")
    if not labels:
        return 1.0
    # as many columns as the figure's width holds at the longest label (about 0.065 in a character)
    fit = int(2.4 * cols // (0.065 * max(len(lab) for lab in labels) + 0.45))
    ncol = max(1, min(len(labels), 5, fit))
    fig.legend(handles, labels, loc="upper center", ncol=ncol, bbox_to_anchor=(0.5, 1.0), frameon=False)
    return 1.0 - 0.07 * -(-len(labels) // ncol) / rows  # room for the legend's rows


def correlations(
    table: pd.DataFrame,
    corr: pd.DataFrame,
    measures: Sequence[str],
    targets: Sequence[str],
    unit: pd.Series,
    colour_key: str | None = None,
):
    """Each measure (a row) against each target (a column) over finished runs, one point per unit (the mean over
    its seeds, bars from its lowest to its highest seed; coloured by ``colour_key`` where given), titled with the
    Spearman rho across units and its bootstrap 95 % interval from ``corr`` (scope ``all``)."""
    corr = corr[corr.scope == "all"] if "scope" in corr else corr
    with style():
        fig, axes = plt.subplots(len(measures), len(targets), figsize=(2.3 * len(targets), 1.9 * len(measures)),
                                 squeeze=False)  # fmt: skip
        kinds = [None] if colour_key is None else sorted(table[colour_key].dropna().astype(str).unique())
        for (i, m), (j, t) in itertools.product(enumerate(measures), enumerate(targets)):
            ax = axes[i, j]
            for c, kind in enumerate(kinds):
                sub = table if kind is None else table[table[colour_key].astype(str) == kind]
                values = sub[[m, t]].apply(pd.to_numeric, errors="coerce").groupby(unit[sub.index], sort=False)
                mean, low, high = values.mean(), values.min(), values.max()
                label = None if kind is None else f"{colour_key}={kind}"
                ax.errorbar(mean[t], mean[m], xerr=[mean[t] - low[t], high[t] - mean[t]],
                            yerr=[mean[m] - low[m], high[m] - mean[m]], fmt="o", ms=3, lw=0.6, color=f"C{c}",
                            label=label)  # fmt: skip
            row = corr[(corr.measure == m) & (corr.target == t)]
            if len(row) and np.isfinite(row.spearman_rho.iloc[0]):
                r = row.iloc[0]
                ax.set_title(rf"$\rho$ = {r.spearman_rho:.2f} [{r.spearman_lo:.2f}, {r.spearman_hi:.2f}]", fontsize=7)
            ax.set_xlabel(_label(t) if i == len(measures) - 1 else "")
            ax.set_ylabel(_label(m) if j == 0 else "")
        if colour_key is not None:
            fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(kinds), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.97 if colour_key is not None else 1))
        return fig


def sharpness(runs: Sequence[tuple[str, pd.DataFrame]]):
    """The sharpness ratio (sharpness / stability threshold) over training of each (label, hessian.csv) run,
    at its scheduled checkpoints, with the edge of stability (1) marked."""
    with style():
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        values = [1.0]
        for i, (label, h) in enumerate(runs):
            h = h[h.kind == "scheduled"].sort_values("step")
            ratio = pd.to_numeric(h.sharpness_ratio, errors="coerce").to_numpy(float)
            line = "-" if i < 10 else "--"  # (ten colours, then dashed)
            ax.plot(h.step, ratio, marker="o", ms=2.5, lw=1, color=f"C{i % 10}", ls=line, label=label)
            values += list(ratio)
        ax.axhline(1.0, color="k", ls="--", lw=1, label="stability threshold")
        _log_if_wide(ax, np.asarray(values))
        ax.set(xlabel="step", ylabel="sharpness / threshold")
        ax.legend(fontsize=6, ncol=2 if len(runs) > 8 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.subplots_adjust(left=0.1, right=0.62, bottom=0.15, top=0.95)
        return fig


LAYER_PANELS = ("lambda_max", "trace", "sane", "sane_net")
LAYER_LABELS = {
    "lambda_max": r"$\lambda_\mathrm{max}$ of the layer's block",
    "trace": r"tr $H_{ll}$",
    "sane": "SANE (the block's own scale)",
    "sane_net": "SANE (the net's scale)",
}


def layers(run, title: str):
    """Per-layer curvature of one run over training (layers.csv, scheduled checkpoints): lambda_max, trace and
    SANE at the block's own and at the whole net's scale of each layer's diagonal Hessian block, a line per
    layer (dark: the input's, light: the output's), estimates with 2 standard errors."""
    t = run.layers[run.layers.kind == "scheduled"].sort_values(["layer", "step"])
    n_layers = int(t.layer.max())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(n_layers, 2)))
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(6.5, 4.4), sharex=True)
        for ax, key in zip(axes.flat, LAYER_PANELS, strict=True):
            for layer, rows in t.groupby("layer"):
                se = rows.get(f"{key}_se", pd.Series(0.0, index=rows.index)).fillna(0).to_numpy(float)
                label = f"{layer}: {rows.module_type.iloc[0]} ({int(rows.params.iloc[0])})"
                ax.errorbar(rows.step, rows[key], yerr=2 * se, fmt="o-", ms=2.5, lw=1, capsize=1.5,
                            color=colours[int(layer) - 1], label=label)  # fmt: skip
            if key in ("lambda_max", "trace"):
                _log_if_wide(ax, np.abs(t[key].to_numpy(float)))
            ax.set_ylabel(LAYER_LABELS[key])
        for ax in axes[1]:
            ax.set_xlabel("step")
        ncol = 1 if n_layers <= 8 else 2
        axes[0, 1].legend(title="layer: type (params)", fontsize=6, title_fontsize=6, ncol=ncol, loc="center left",
                          bbox_to_anchor=(1.02, 0.5))  # fmt: skip
        fig.suptitle(title, fontsize=9)
        fig.subplots_adjust(left=0.09, right=0.78 if ncol == 1 else 0.68, bottom=0.1, top=0.91, wspace=0.3,
                            hspace=0.1)  # fmt: skip
        return fig


def layer_profile(profiles: pd.DataFrame, line: str):
    """Per-layer curvature at the end of training against the layer's place in the net, a line per value of
    ``line`` (``profiles``: columns line, layer, and each of LAYER_PANELS with _mean and _std over seeds)."""
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(6.5, 4.4), sharex=True)
        groups = sorted(profiles[line].unique(), key=_order)
        for ax, key in zip(axes.flat, LAYER_PANELS, strict=True):
            for i, value in enumerate(groups):
                rows = profiles[profiles[line] == value].sort_values("layer")
                ax.errorbar(rows.layer, rows[f"{key}_mean"], yerr=rows[f"{key}_std"].fillna(0), fmt="o", ms=3,
                            capsize=2, color=f"C{i % 10}", ls="-" if i < 10 else "--", label=str(value))  # fmt: skip
            if key in ("lambda_max", "trace"):
                _log_if_wide(ax, np.abs(profiles[f"{key}_mean"].to_numpy(float)))
            ax.set_ylabel(LAYER_LABELS[key])
        for ax in axes[1]:
            ax.set_xlabel("layer (1: the input's)")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0, 1].legend(title=line, fontsize=6, title_fontsize=6, ncol=2 if len(groups) > 10 else 1,
                          loc="center left", bbox_to_anchor=(1.02, 0.5))  # fmt: skip
        fig.subplots_adjust(left=0.09, right=0.72, bottom=0.1, top=0.97, wspace=0.3, hspace=0.1)
        return fig


def threshold_label(h: pd.DataFrame) -> str:
    """The legend of a run's stability threshold: 2/eta when it is plain GD's, else its name (and the
    sharpness it bounds when that is a preconditioned one)."""
    if _preconditioned(h):
        return r"threshold of $\lambda_\mathrm{max}(P^{-1}H)$"
    plain = np.isclose(float(h.stability_threshold.iloc[0]), 2 / float(h.lr.iloc[0]), rtol=1e-9)
    return r"$2/\eta$" if plain else "stability threshold"


def _preconditioned(h: pd.DataFrame) -> bool:
    """Whether a run's threshold bounds its preconditioned sharpness (Adam) rather than lambda_max."""
    return "preconditioned_sharpness" in h and bool(h.preconditioned_sharpness.notna().any())


def _order(value) -> tuple:
    """Numbers first, in order, then anything else (e.g. ``null``) by its text."""
    return (0, float(value), "") if _is_number(value) else (1, 0.0, str(value))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


def dynamics(run, spikes: Sequence[int], title: str):
    """Training dynamics of one run: train and test loss (spikes marked), lambda_max against 2/lr, SANE
    and N_eff over steps (estimates with their standard errors)."""
    h, m = run.hessian.sort_values("step"), run.metrics
    steps, losses = run.step_losses()
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(6.5, 4.2), sharex=True)
        ax = axes[0, 0]
        ax.plot(steps, losses, color="C0", lw=0.8, label="train (per step)")
        ax.plot(m.step, m.test_loss, color="C1", label="test")
        _log_if_wide(ax, np.concatenate([losses, m.test_loss.to_numpy(dtype=float)]))
        ax.set_ylabel("loss")
        ax = axes[0, 1]
        subset = bool((h.subset < run.summary.get("n_train", np.inf)).any()) if len(h) else False
        label = r"$\lambda_\mathrm{max}$" + (f" ({int(h.subset.iloc[0])} examples)" if subset else "")
        ax.plot(h.step, h.lambda_max, "o-", color="C2", label=label)
        if subset:  # the sharpness that the optimiser meets: that of the whole training loss
            ax.plot(h.step, h.lambda_max_train, "s-", color="C4", ms=3, label=r"$\lambda_\mathrm{max}$ (training set)")
        if _preconditioned(h):  # ... through Adam's preconditioner P
            ax.plot(h.step, h.preconditioned_sharpness, "^-", color="C5", ms=3,
                    label=r"$\lambda_\mathrm{max}(P^{-1}H)$")  # fmt: skip
        if len(h):  # (a run stopped before its first checkpoint has none)
            threshold = float(h.stability_threshold.iloc[0])
            ax.axhline(threshold, color="k", ls="--", lw=1, label=threshold_label(h))
            shown = h.lambda_max.to_numpy(dtype=float)
            if _preconditioned(h):
                shown = np.append(shown, h.preconditioned_sharpness.to_numpy(dtype=float))
            _log_if_wide(ax, np.append(shown, threshold))
        ax.set_ylabel(r"$\lambda_\mathrm{max}$")
        estimated = bool((h.sane_se > 0).any())
        for ax, key in ((axes[1, 0], "sane"), (axes[1, 1], "n_eff")):
            ax.errorbar(h.step, h[key], yerr=2 * h[f"{key}_se"].fillna(0), fmt="o-", color="C3", capsize=2)
            ax.set_ylabel(_label(key) + (r" ($\pm$2 SE)" if estimated else ""))
            ax.set_xlabel("step")
        for ax in axes.flat:
            for s in spikes:
                ax.axvline(s, **SPIKE)
        spike_handle = [plt.Line2D([], [], label="spike", **SPIKE)] if len(spikes) else []
        axes[0, 0].legend(handles=axes[0, 0].get_legend_handles_labels()[0] + spike_handle)
        axes[0, 1].legend()
        fig.suptitle(title, fontsize=9)
        # fixed margins: tight_layout would cost a third of the report's time over many runs
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.91, wspace=0.25, hspace=0.1)
        return fig


def basins(run, table: pd.DataFrame, sim_steps: list[int], sim: np.ndarray, title: str):
    """Loss basins of one run: basins shaded on the loss curve, lambda_max before and after each spike
    against 2/lr, with where the matched null puts it after as many steps without a spike (basins.csv's
    matched_flattening times the value before), the top-eigenvector similarity between all checkpoints, and the
    spectrum before and after the first spike with a measured pair."""
    steps, losses = run.step_losses()
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(6.5, 4.8))
        ax = axes[0, 0]
        ax.plot(steps, losses, color="C0", lw=0.8)
        for i, b in table.iterrows():
            ax.axvspan(b.start, b.end, color=f"C{i % 2 + 7}", alpha=0.15, lw=0)
            if np.isfinite(b.spike_step):
                ax.axvline(b.spike_step, **SPIKE)
        _log_if_wide(ax, losses)
        ax.set(xlabel="step", ylabel="train loss", title="basins between spikes")
        ax = axes[0, 1]
        spikes = table.dropna(subset=["lambda_max_before", "lambda_max_after"])
        x = np.arange(len(spikes))
        ax.bar(x - 0.2, spikes.lambda_max_before, 0.4, label="before", color="C2")
        ax.bar(x + 0.2, spikes.lambda_max_after, 0.4, label="after", color="C4")
        if "matched_flattening" in spikes and spikes.matched_flattening.notna().any():
            # where lambda_max would be after as many steps without a spike (the matched null's mean ratio)
            ax.plot(x + 0.2, spikes.lambda_max_before * spikes.matched_flattening, "k_", ms=14, mew=2,
                    label="after, matched null")  # fmt: skip
        if not _preconditioned(run.hessian):  # (Adam's threshold bounds P^-1 H, not the lambda_max shown)
            ax.axhline(float(run.hessian.stability_threshold.iloc[0]), color="k", ls="--", lw=1,
                       label=threshold_label(run.hessian))  # fmt: skip
        ax.set_xticks(x, [f"{int(s)}" for s in spikes.spike_step], rotation=45 if len(x) > 6 else 0)
        ax.set(xlabel="spike at step", ylabel=r"$\lambda_\mathrm{max}$", title="flattening")
        shown = [v for v in (*spikes.lambda_max_before, *spikes.lambda_max_after) if np.isfinite(v)]
        if shown:  # headroom above the bars for the legend
            ax.set_ylim(top=1.8 * max(max(shown), ax.get_ylim()[1] / 1.8))
        ax.legend(ncol=2, fontsize=6)
        ax = axes[1, 0]
        ax.grid(False)
        im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ticks = np.unique(np.linspace(0, len(sim_steps) - 1, min(len(sim_steps), 8)).astype(int))
        ax.set_xticks(ticks, [sim_steps[t] for t in ticks], rotation=45)
        ax.set_yticks(ticks, [sim_steps[t] for t in ticks])
        ax.set(xlabel="checkpoint step", ylabel="checkpoint step", title="top-eigenvector similarity")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax = axes[1, 1]
        if len(spikes):
            first = spikes.iloc[0]
            pair = ((first.before_step, "C2", "before"), (first.after_step, "C4", "after"))
            _densities(ax, [(*run.density(int(s)), c, f"{name} (step {int(s)})") for s, c, name in pair])
            ax.set(title=f"spectrum across the spike at step {int(first.spike_step)}")
            ax.legend()
        ax.set(xlabel="eigenvalue", ylabel="fraction of eigenvalues")
        fig.suptitle(title, fontsize=9)
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.13, top=0.89, wspace=0.5, hspace=0.65)
        return fig


def _log_if_wide(ax, values: np.ndarray) -> None:
    """A log y axis when the positive values span more than a decade."""
    v = values[np.isfinite(values)]
    if len(v) and v.min() > 0 and v.max() / v.min() > 10:
        _log_y(ax, dense=v.max() / v.min() < 100)


def _log_y(ax, dense: bool = False) -> None:
    """A log y axis with plain labels (0.5, 1, 10; not 5 x 10^-1, which are also slow to typeset); ticks
    at 1, 2, 5 x 10^n when ``dense`` (axes spanning about two decades), else at powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if dense else (1.0,)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _densities(ax, spectra: list[tuple[np.ndarray, np.ndarray | None, str, str]]) -> None:
    """Each spectrum (values, weights, color, label) as the fraction of eigenvalues (SLQ: quadrature
    weight) in 60 shared bins, log y axis; the bulk near 0 is usually orders of magnitude above the
    outliers."""
    kept = []
    for values, weights, color, label in spectra:
        w = np.ones_like(values) / len(values) if weights is None else weights / np.sum(weights)
        keep = w > 1e-8  # SLQ nodes with negligible weight are ghosts of the quadrature, not eigenvalues
        kept.append((values[keep], w[keep], color, label))
    lo, hi = min(v.min() for v, *_ in kept), max(v.max() for v, *_ in kept)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, 61)
    for values, w, color, label in kept:
        _density(ax, values, w, color, label, edges)


def _density(ax, values, w, color, label, edges) -> None:
    ax.hist(values, bins=edges, weights=w, histtype="step", color=color, label=label)
    _log_y(ax)
    ax.set_ylim(bottom=max(w.min() / 3, 1e-8))


def spectra(run, title: str):
    """The eigenvalue density at the first and the last checkpoint of a run (early against late)."""
    steps = run.spectrum_steps()
    with style():
        fig, ax = plt.subplots(figsize=(3.3, 2.4))
        _densities(ax, [(*run.density(s), c, f"step {s}") for s, c in ((steps[0], "C0"), (steps[-1], "C3"))])
        ax.set(xlabel="eigenvalue", ylabel="fraction of eigenvalues", title=title)
        ax.legend()
        fig.subplots_adjust(left=0.2, right=0.96, bottom=0.18, top=0.88)
        return fig
