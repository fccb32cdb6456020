"""Every checkpoint pair of the study's runs, in one table for verdict.py: the pair across each loss spike and
the scheduled pairs 10 and 20 steps apart, with how lambda_max and the top eigenvectors moved between them.

Usage: python pairs.py OUT.csv.gz RUN_FOLDER...   (the run folders of one part of the study)

Columns: run, lr, seed, kind (spike: the pre-spike checkpoint s - 1 and the post-spike one s + 9 of the spike
at step s; null: two scheduled checkpoints with no spike between; cross: two scheduled checkpoints with a
spike between), a, b (their steps), gap (b - a), spike_step (spike and cross pairs), inside_spike (a lies
within 10 steps after a spike's first step, while the loss is still jumping), ratio_a (the sharpness ratio
lambda_max / (2/lr) at a), log_flattening (log lambda_max(b) / lambda_max(a)), similarity_k1, _k5, _k10 (the
top-k eigenvector subspace similarity ||U_a^T U_b||_F^2 / k), distance (the scale-free distance between the
two spectra).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from sane_cli.basins import subspace_similarity
from sane_cli.measures import spectrum_distance
from sane_cli.records import load_run
from sane_cli.schedule import detect_spikes

GAPS = (10, 20)  # scheduled pairs this many steps apart (the checkpoints are every 10 steps)
SETTLE = 10  # steps after a spike's first step within which a checkpoint is inside the spike
KS = (1, 5, 10)


def run_pairs(path) -> list[dict]:
    run = load_run(path)
    cfg = run.config
    steps, losses = run.step_losses()
    spikes = np.array(detect_spikes(steps, losses, float(cfg["hessian"]["spike_threshold"])))
    h = run.hessian.drop_duplicates("step").set_index("step")
    scheduled = sorted(h.index[h.kind == "scheduled"])
    cache: dict[int, tuple] = {}

    def spectrum(step: int):
        if step not in cache:
            cache[step] = (run.spectrum(step)[1], run.density(step))
        return cache[step]

    def row(kind: str, a: int, b: int, spike) -> dict:
        (u_a, d_a), (u_b, d_b) = spectrum(a), spectrum(b)
        out = {"run": str(path), "lr": cfg["optim"]["lr"], "seed": cfg["seed"], "kind": kind, "a": a, "b": b,
               "gap": b - a, "spike_step": spike, "inside_spike": bool(((spikes <= a) & (a < spikes + SETTLE)).any()),
               "ratio_a": h.sharpness_ratio[a], "log_flattening": np.log(h.lambda_max[b] / h.lambda_max[a]),
               "distance": spectrum_distance(*d_a, *d_b)}  # fmt: skip
        out.update({f"similarity_k{k}": subspace_similarity(u_a[:, :k], u_b[:, :k]) for k in KS})
        return out

    rows = []
    for i, s in enumerate(spikes):
        after = s + int(cfg["hessian"]["spike_after"])
        following = spikes[i + 1] if i + 1 < len(spikes) else np.inf
        if s - 1 in h.index and after in h.index and after < following:
            rows.append(row("spike", int(s - 1), int(after), int(s)))
    present = set(scheduled)
    for gap in GAPS:
        for a in scheduled:
            if a + gap in present:
                between = spikes[(spikes > a) & (spikes <= a + gap)]
                kind = "quiet" if len(between) == 0 else "cross"
                rows.append(row(kind, a, a + gap, int(between[0]) if len(between) else np.nan))
    return rows


if __name__ == "__main__":
    out, folders = sys.argv[1], sys.argv[2:]
    table = pd.DataFrame([r for f in folders for r in run_pairs(f)])
    table.to_csv(out, index=False, float_format="%.6g")
    print(f"{len(table)} pairs from {len(folders)} runs -> {out}")
