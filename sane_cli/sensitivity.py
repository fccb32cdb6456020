"""The report's sensitivity table: N_eff and SANE recomputed from each run's saved spectra at other settings of
alpha, rho and k, and at the evidence framework's optimal prior precision, with no retraining. Imports neither
torch nor matplotlib.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UsageError
from .records import Run
from .tables import late_checkpoints, run_status


def sensitivity_table(
    runs: list[Run], labels, rhos=(0.5,), ks=(1,), alphas=(0.5,)
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """N_eff and SANE recomputed from each run's saved spectra, for every ``alphas`` (N_eff) and every (rho, k)
    of ``rhos`` x ``ks`` (SANE), with no retraining; and N_eff at the evidence framework's optimal prior
    precision (:func:`sane_cli.measures.evidence_precision`, on the Hessian of the summed loss over the
    ``subset`` examples the spectrum is of; ``prior_precision_evidence`` is that gamma). Each at the run's last
    scheduled checkpoint and, as ``<column>_late``, averaged over :func:`late_checkpoints` (at large learning
    rates one end-point Hessian is a random phase of an oscillation). The run's own eig_mode is kept. Runs
    without a full spectrum (lanczos, slq: :meth:`sane_cli.records.Run.full_spectrum`) or whose spectrum cannot
    be read have NaN, and runs whose hessian.csv lacks weight_norm_sq have no evidence values.

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
        mode = run.config.get("hessian", {}).get("eig_mode", "abs")
        try:
            if not run.full_spectrum(int(last.step)):
                notes.append(f"{run.path}: its spectrum is not complete ({last.method}); no sensitivity values")
                rows.append(row)
                continue
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
