"""Loss basins of large-learning-rate training: spikes in the training loss, the basins between them, and
how the Hessian changes across each spike.

    spike       found by sane_cli.schedule.SpikeDetector: a step whose training loss exceeds (1 + threshold) x
                the lowest loss of the current basin, after the loss has fallen within that basin
    basin       the steps from one spike (or step 0) up to the next spike
    flattening  lambda_max (and SANE's scale rho * |lambda|_(k)) after a spike against before it
    shift       similarity of the top-k eigenvector subspaces before and after,
                s(U_a, U_b) = ||U_a^T U_b||_F^2 / k in [0, 1], and the distance between the two spectra
    null        the mean similarity and the mean lambda_max ratio (later / earlier) of the checkpoint pairs
                as many steps apart as the pair across the spike, but with no spike between them
                (null_pairs of them; NaN when the run has none, e.g. hessian.every larger than that
                gap): how far the subspace turns, and lambda_max moves, in that time anyway
    matched     the same null restricted by a rule fixed in advance: the pair's earlier checkpoint lies at step
                TRANSIENT (20) or later (lambda_max rises several-fold from initialisation in every run) and its
                sharpness ratio is within a factor MATCH (1.15) of the checkpoint before the spike (checkpoints
                before spikes sit at sharpness peaks; unmatched, falling back from a peak looks like
                flattening); matched_similarity, matched_flattening and matched_distance (the spectrum
                distance) are their means, over matched_pairs pairs
    adjusted    the null read at the spike's own sharpness by regression, not by a window: over the same run's
                null pairs that start at step TRANSIENT or later, once the run has first reached its stability
                threshold (sharpness ratio 1: the sharpening before it turns the eigenvectors as no run at the
                edge does), and not inside a spike (within ``hessian.spike_after`` steps of one), least squares
                of log(lambda_max later / earlier), and of the subspace similarity, on the log sharpness ratio of
                the earlier checkpoint; adjusted_flattening (exp of the first fit) and adjusted_similarity are
                the fits at the ratio before the spike, over adjusted_pairs pairs (NaN below 3 pairs or where
                their ratios are all one). Pairs near the spike's sharpness are few, so a window holds few pairs
                or reaches far; the line uses every pair and extrapolates where the spike's ratio lies beyond
                them (the study experiments/2026-12-06-basins-adjusted registered this null; the matched one's
                reading there depended on its window)

The detector is the one ``sane-run`` runs during training (to take curvature checkpoints just before and just
after each spike, ``hessian.on_spike``), so the report finds the spikes that training measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UsageError
from .measures import kth_largest, spectrum_distance
from .schedule import detect_spikes

BASIN_COLUMNS = [
    "basin", "start", "end", "min_loss", "spike_step", "peak_loss", "before_step", "after_step",
    "lambda_max_before", "lambda_max_after", "flattening", "sane_scale_before", "sane_scale_after",
    "sane_before", "sane_after", "similarity", "spectrum_distance", "null_similarity", "null_flattening", "null_pairs",
    "sharpness_ratio_before", "matched_similarity", "matched_flattening", "matched_distance", "matched_pairs",
    "adjusted_similarity", "adjusted_flattening", "adjusted_pairs",
]  # fmt: skip
TRANSIENT = 20  # steps after initialisation left out of the matched null: lambda_max rises several-fold there
MATCH = 1.15  # a matched null pair's earlier checkpoint has a sharpness ratio within this factor of the spike's


def basin_bounds(spikes: list[int], first: int, last: int) -> list[tuple[int, int]]:
    """(start, end) of each basin: from ``first`` to the first spike, between spikes, to ``last``.
    A basin's end is the next spike's step (exclusive) or ``last`` (inclusive)."""
    edges = [first, *[s for s in spikes if first < s <= last], last]
    return list(zip(edges[:-1], edges[1:], strict=True))


def subspace_similarity(u_a: np.ndarray, u_b: np.ndarray) -> float:
    """s(U_a, U_b) = ||U_a^T U_b||_F^2 / k for orthonormal columns (P, k); 1 for the same subspace, 0 for
    orthogonal ones, k/P on average for random ones. The smaller k of the two is used.

    >>> float(subspace_similarity(np.eye(4)[:, :2], np.eye(4)[:, [1, 2]]))
    0.5
    """
    k = min(u_a.shape[1], u_b.shape[1])
    if k == 0:
        return float("nan")
    return float(np.sum((u_a[:, :k].T @ u_b[:, :k]) ** 2) / k)


def analyse(run, threshold: float | None = None) -> pd.DataFrame:
    """One row per basin of a run (:class:`sane_cli.records.Run`), with the spike that ends it: its step,
    the peak loss, and the curvature at the last checkpoint before the spike and the first one at or after
    it (flattening = lambda_max_after / lambda_max_before; similarity of the top eigenvectors; spectrum
    distance). ``threshold`` defaults to the run's ``hessian.spike_threshold`` (0.5 for runs without one).
    """
    if threshold is None:
        threshold = float(run.config.get("hessian", {}).get("spike_threshold", 0.5))
    steps, losses = run.step_losses()
    if len(steps) == 0:
        return pd.DataFrame(columns=BASIN_COLUMNS)
    spikes = detect_spikes(steps, losses, threshold)
    curv = run.hessian.sort_values("step").drop_duplicates("step")
    settle = int(run.config.get("hessian", {}).get("spike_after", 5))
    null = _NullSimilarity(run, spikes, settle=settle)
    rows = []
    for i, (start, end) in enumerate(basin_bounds(spikes, int(steps[0]), int(steps[-1]))):
        in_basin = (steps >= start) & (steps < end) | (steps == end) & (i == len(spikes))
        row = dict.fromkeys(BASIN_COLUMNS, np.nan)
        row.update(basin=i, start=start, end=end, min_loss=float(np.min(losses[in_basin])))
        if i < len(spikes):
            spike = spikes[i]
            after_spike = (steps >= spike) & (steps < (spikes[i + 1] if i + 1 < len(spikes) else np.inf))
            row.update(spike_step=spike, peak_loss=float(np.max(losses[after_spike])))
            row.update(_across(run, curv, spike, spikes[i + 1] if i + 1 < len(spikes) else None))
            if np.isfinite(row["similarity"]):
                gap = int(row["after_step"] - row["before_step"])
                row["null_similarity"], row["null_flattening"], row["null_pairs"] = null(gap)
                ratio = null.ratio.get(int(row["before_step"]), np.nan)
                row["sharpness_ratio_before"] = ratio
                matched = null.matched(gap, ratio)
                row.update(zip(("matched_similarity", "matched_flattening", "matched_distance", "matched_pairs"),
                               matched, strict=True))  # fmt: skip
                row.update(zip(("adjusted_similarity", "adjusted_flattening", "adjusted_pairs"),
                               null.adjusted(gap, ratio), strict=True))  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=BASIN_COLUMNS)


def _across(run, curv: pd.DataFrame, spike: int, next_spike: int | None) -> dict:
    """The curvature just before (the last checkpoint at step < spike: the pre-spike one where taken) and
    after a spike: its post-spike checkpoint (``hessian.spike_after`` steps on, once the loss has had time to
    settle) where there is one before the next spike, else the first checkpoint at step >= spike."""
    before, after = curv[curv.step < spike], curv[curv.step >= spike]
    if before.empty or after.empty:
        return {}
    b, a = before.iloc[-1], after.iloc[0]
    if "kind" in after:
        post = after[(after.kind == "post_spike") & (after.step < (next_spike if next_spike is not None else np.inf))]
        if len(post):
            a = post.iloc[0]
    out = {
        "before_step": int(b.step), "after_step": int(a.step),
        "lambda_max_before": b.lambda_max, "lambda_max_after": a.lambda_max,
        "flattening": a.lambda_max / b.lambda_max if b.lambda_max != 0 else np.nan,
        "sane_before": b.sane, "sane_after": a.sane,
    }  # fmt: skip
    try:
        ev_b, vec_b = run.spectrum(int(b.step))
        ev_a, vec_a = run.spectrum(int(a.step))
    except Exception:  # a missing spectra file leaves the eigenvector columns empty
        return out
    k = int(run.config.get("hessian", {}).get("k", 1))
    mode = run.config.get("hessian", {}).get("eig_mode", "abs")
    rho = float(run.config.get("hessian", {}).get("rho", 0.5))
    if len(ev_b) >= k and len(ev_a) >= k:
        out["sane_scale_before"] = rho * kth_largest(ev_b, k, mode)
        out["sane_scale_after"] = rho * kth_largest(ev_a, k, mode)
    out["similarity"] = subspace_similarity(vec_b, vec_a)
    out["spectrum_distance"] = spectrum_distance(*run.density(int(b.step)), *run.density(int(a.step)))
    return out


class _NullSimilarity:
    """The mean subspace similarity and lambda_max ratio of a run's checkpoint pairs ``gap`` steps apart with
    no spike in between, and their number; eigenvectors read once per checkpoint."""

    def __init__(self, run, spikes: list[int], settle: int = 5):
        self.run, self.spikes, self.vectors, self.settle, self.fits = run, np.asarray(spikes), {}, settle, {}
        self.steps = set(run.spectrum_steps())
        h = run.hessian.drop_duplicates("step") if len(run.hessian) else run.hessian
        self.lambda_max = dict(zip(h.step, h.lambda_max, strict=True)) if len(h) else {}
        self.ratio = dict(zip(h.step, h.sharpness_ratio, strict=True)) if len(h) else {}
        at_edge = [step for step, r in self.ratio.items() if np.isfinite(r) and r >= 1]
        self.edge = min(at_edge) if at_edge else 0  # the first checkpoint at the stability threshold
        self.densities = {}

    def _vectors(self, step: int) -> np.ndarray | None:
        """The checkpoint's top eigenvectors; None for a damaged spectra file (its pairs are left out)."""
        if step not in self.vectors:
            try:
                self.vectors[step] = self.run.spectrum(step)[1]
            except UsageError:
                self.vectors[step] = None
        return self.vectors[step]

    def _pairs(self, gap: int) -> list[tuple[int, int]]:
        """Checkpoint pairs ``gap`` steps apart with no spike between and readable spectra."""
        return [(a, a + gap) for a in sorted(self.steps) if a + gap in self.steps
                and not ((self.spikes > a) & (self.spikes <= a + gap)).any()
                and self._vectors(a) is not None and self._vectors(a + gap) is not None]  # fmt: skip

    def _rated_pairs(self, gap: int, start: int) -> list[tuple[int, int]]:
        """The null pairs ``gap`` apart whose earlier checkpoint lies at step ``start`` or later with a lambda_max
        and a finite, positive sharpness ratio: those the matched and adjusted nulls read."""
        return [(a, b) for a, b in self._pairs(gap) if a >= start and self.lambda_max.get(a)
                and np.isfinite(self.ratio.get(a, np.nan)) and self.ratio[a] > 0]  # fmt: skip

    def __call__(self, gap: int) -> tuple[float, float, int]:
        pairs = self._pairs(gap)
        if not pairs:
            return float("nan"), float("nan"), 0
        sims = [subspace_similarity(self._vectors(a), self._vectors(b)) for a, b in pairs]
        ratios = [self.lambda_max[b] / self.lambda_max[a] for a, b in pairs if self.lambda_max.get(a)]
        return float(np.mean(sims)), float(np.mean(ratios)) if ratios else float("nan"), len(pairs)

    def matched(self, gap: int, ratio: float) -> tuple[float, float, float, int]:
        """(mean similarity, mean lambda_max ratio, mean spectrum distance, pairs) of the null pairs ``gap``
        apart whose earlier checkpoint is at step TRANSIENT or later with a sharpness ratio within a factor MATCH
        of ``ratio`` (the checkpoint before the spike)."""
        if not np.isfinite(ratio) or ratio <= 0:
            return float("nan"), float("nan"), float("nan"), 0
        pairs = [(a, b) for a, b in self._rated_pairs(gap, TRANSIENT)
                 if abs(np.log(self.ratio[a] / ratio)) <= np.log(MATCH)]  # fmt: skip
        if not pairs:
            return float("nan"), float("nan"), float("nan"), 0
        sims = [subspace_similarity(self._vectors(a), self._vectors(b)) for a, b in pairs]
        flat = [self.lambda_max[b] / self.lambda_max[a] for a, b in pairs]
        dist = [spectrum_distance(*self._density(a), *self._density(b)) for a, b in pairs]
        return float(np.mean(sims)), float(np.mean(flat)), float(np.nanmean(dist)), len(pairs)

    def adjusted(self, gap: int, ratio: float) -> tuple[float, float, int]:
        """(similarity, lambda_max ratio, pairs) that the run's null pairs ``gap`` apart predict at sharpness ratio
        ``ratio``: least squares of their similarity and log lambda_max ratio on their log sharpness ratio, over the
        pairs that start at step TRANSIENT or later, at or after the run's first checkpoint at the stability
        threshold, and not within ``settle`` steps after a spike's first step."""
        if gap not in self.fits:
            pairs = [(a, b) for a, b in self._rated_pairs(gap, max(TRANSIENT, self.edge))
                     if self.lambda_max.get(b, 0) > 0
                     and not ((self.spikes <= a) & (a <= self.spikes + self.settle)).any()]  # fmt: skip
            x = np.log([self.ratio[a] for a, _ in pairs])
            fit = None
            if len(pairs) >= 3 and np.ptp(x) > 0:
                design = np.column_stack([np.ones_like(x), x])
                sims = [subspace_similarity(self._vectors(a), self._vectors(b)) for a, b in pairs]
                flat = [np.log(self.lambda_max[b] / self.lambda_max[a]) for a, b in pairs]
                fit = np.linalg.lstsq(design, np.column_stack([sims, flat]), rcond=None)[0]
            self.fits[gap] = (fit, len(pairs))
        fit, n = self.fits[gap]
        if fit is None or not np.isfinite(ratio) or ratio <= 0:
            return float("nan"), float("nan"), n
        similarity, log_flattening = np.array([1.0, np.log(ratio)]) @ fit
        return float(similarity), float(np.exp(log_flattening)), n

    def _density(self, step: int):
        if step not in self.densities:
            self.densities[step] = self.run.density(step)
        return self.densities[step]


def similarity_matrix(run) -> tuple[list[int], np.ndarray]:
    """(checkpoint steps, matrix S) with S[i, j] = s(U_i, U_j), the top-eigenvector subspace similarity
    between every pair of curvature checkpoints of a run."""
    steps = run.spectrum_steps()
    vectors = [run.spectrum(s)[1] for s in steps]
    n = len(steps)
    sim = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            sim[i, j] = sim[j, i] = subspace_similarity(vectors[i], vectors[j])
    return steps, sim
