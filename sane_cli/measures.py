"""Spectral measures of a Hessian: N_eff, SANE, the per-checkpoint summary, and the checkpoint's row with the
sharpness the optimiser meets against its stability threshold (:func:`checkpoint_row`).

All functions take the eigenvalues as a 1-D array (any order) and return plain floats.
Definitions follow the authors' public implementation:

    N_eff(alpha)  = sum_i |l_i| / (|l_i| + alpha)
    SANE(rho, k)  = sum_i |l_i| / (|l_i| + rho * |l|_(k))

where |l|_(k) is the k-th largest |eigenvalue|. With ``mode="clip"`` negative eigenvalues are set to 0
instead of taking absolute values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .records.schema import HESSIAN_COLUMNS, SETTING_COLUMNS

MODES = ("abs", "clip")


EPS64 = float(np.finfo(np.float64).eps)  # the rounding unit of float64


def magnitudes(eigenvalues: np.ndarray, mode: str) -> np.ndarray:
    """|eigenvalues| (``abs``) or eigenvalues clipped at 0 (``clip``), elementwise, any shape."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if mode == "abs":
        return np.abs(lam)
    if mode == "clip":
        return np.clip(lam, 0.0, None)
    raise ValueError(f"eig_mode={mode!r} is not one of {MODES}")


def n_eff(eigenvalues: np.ndarray, alpha: float = 0.5, mode: str = "abs") -> float:
    """Effective number of parameters, sum_i m_i / (m_i + alpha), with m = |eigenvalues| (or clipped).

    >>> n_eff([1.0, 1.0, 0.0], alpha=1.0)
    1.0
    """
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0")
    m = magnitudes(eigenvalues, mode)
    return float(np.sum(m / (m + alpha)))


def kth_largest(eigenvalues: np.ndarray, k: int = 1, mode: str = "abs") -> float:
    """The k-th largest magnitude |l|_(k) (1-based), SANE's scale.

    >>> kth_largest([3.0, -5.0, 1.0], k=1)
    5.0
    """
    m = magnitudes(eigenvalues, mode)
    if not 1 <= k <= m.size:
        raise ValueError(f"k={k} must be between 1 and the number of eigenvalues ({m.size})")
    return float(np.partition(m, m.size - k)[m.size - k])


def sane(eigenvalues: np.ndarray, rho: float = 0.5, k: int = 1, mode: str = "abs") -> float:
    """Sharpness Adjusted Number of Effective parameters, N_eff with alpha = rho * |l|_(k).

    Invariant to rescaling the whole spectrum. A zero spectrum has SANE 0.

    >>> sane([2.0, 2.0, 0.0], rho=1.0, k=1)
    1.0
    """
    if rho <= 0:
        raise ValueError(f"rho={rho} must be > 0")
    scale = rho * kth_largest(eigenvalues, k, mode)
    if scale == 0.0:
        return 0.0
    return n_eff(eigenvalues, alpha=scale, mode=mode)


def laplace_log_evidence(
    eigenvalues: np.ndarray, n: int, mean_loss: float, sq_norm: float, prior_precision: float = 1.0
) -> float:
    """log p(D) of the Laplace approximation at the parameters theta (MacKay 1992), with the isotropic
    Gaussian prior N(0, I / gamma) and the likelihood exp(-n L(theta)) of the n examples whose mean loss L
    the Hessian is of (eigenvalues ``eigenvalues``)::

        log p(D) ~ -n L - (gamma / 2) |theta|^2 + (P / 2) log gamma - 1/2 sum_i log(n max(l_i, 0) + gamma)

    (the (2 pi)^(P/2) of the prior and of the Gaussian integral cancel). The posterior precision is
    n H + gamma I; negative eigenvalues, where the loss is not at a minimum along that direction, are
    counted as 0 (the prior alone), as a Gauss-Newton Hessian would. Exact at the maximum of the posterior of
    a model whose log-likelihood is quadratic (Bayesian linear regression), up to the likelihood's
    normalising constant, which does not depend on the model.

    >>> round(laplace_log_evidence(np.array([1.0, 0.0]), n=4, mean_loss=0.5, sq_norm=2.0), 6)
    -3.804719
    """
    ev = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    g = float(prior_precision)
    return float(-n * mean_loss - 0.5 * g * sq_norm + 0.5 * ev.size * np.log(g) - 0.5 * np.sum(np.log(n * ev + g)))


def evidence_precision(eigenvalues: np.ndarray, n: int, sq_norm: float, mode: str = "abs") -> float:
    """The prior precision gamma at which MacKay's evidence is stationary: gamma = N(gamma) / |theta|^2 with
    N(gamma) = sum_i n m_i / (n m_i + gamma), the effective number of parameters of the Hessian of the summed
    loss (n times the mean loss whose eigenvalues m = |eigenvalues| (or clipped) are given) under the prior
    N(0, I / gamma). N_eff of the mean-loss Hessian at alpha = gamma / n is that N. The fixed point is unique
    (gamma - N(gamma) / |theta|^2 increases from -N(0) / |theta|^2); found by bisection in log gamma to 1e-12
    relative. NaN without a positive |theta|^2 or a non-zero eigenvalue.

    >>> g = evidence_precision(np.array([2.0, 1.0, 0.0]), n=10, sq_norm=4.0)
    >>> round(g * 4.0 - sum(10 * m / (10 * m + g) for m in (2.0, 1.0)), 10)
    0.0
    """
    m = n * magnitudes(eigenvalues, mode).ravel()
    if not (np.isfinite(sq_norm) and sq_norm > 0) or not np.any(m > 0):
        return float("nan")

    def excess(g: float) -> float:
        return g * sq_norm - float(np.sum(m / (m + g)))

    lo, hi = 1e-300, max(1.0, float(np.count_nonzero(m)) / sq_norm)  # excess(lo) < 0 <= excess(hi)
    for _ in range(400):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
        if hi / lo - 1 < 1e-12:
            break
    return float(np.sqrt(lo * hi))


def spectrum_summary(
    eigenvalues: np.ndarray, *, alpha: float, rho: float, k: int, mode: str = "abs", eps: float = EPS64
) -> dict[str, float | int]:
    """What hessian.csv records of a whole spectrum: lambda_max, lambda_min, trace, n_negative, n_negative_se,
    negative_below, n_eff, sane.

    n_negative counts the eigenvalues below -negative_below = -P eps max|lambda|, ``eps`` the rounding unit of the
    precision the spectrum was computed in: a symmetric eigensolver returns each eigenvalue to within about that,
    so an exact zero (a dead unit's directions, cross-entropy's shift of every logit by the same amount) counts
    as zero, not as negative half the time. An exact count: its standard error is 0.

    >>> spectrum_summary(np.array([2.0, 0.0, -1e-18, -1.0]), alpha=1.0, rho=0.5, k=1)["n_negative"]
    1
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    zero = lam.size * eps * float(np.abs(lam).max()) if lam.size else 0.0
    return {
        "lambda_max": float(lam.max()),
        "lambda_min": float(lam.min()),
        "trace": float(lam.sum()),
        "n_negative": int(np.count_nonzero(lam < -zero)),
        "n_negative_se": 0.0,
        "negative_below": zero,
        "n_eff": n_eff(lam, alpha, mode),
        "sane": sane(lam, rho, k, mode),
    }


def spectrum_distance(
    values_a: np.ndarray, weights_a: np.ndarray | None, values_b: np.ndarray, weights_b: np.ndarray | None
) -> float:
    """Distance between two spectra as distributions: the Wasserstein-1 (earth mover's) distance between
    the eigenvalue distributions (each eigenvalue weighted equally unless weights are given, e.g. SLQ's
    quadrature weights), divided by the mean |eigenvalue| of the first, so that it is scale free; 0 for the
    same spectrum.

    >>> spectrum_distance(np.array([1.0, 3.0]), None, np.array([1.0, 3.0]), None)
    0.0
    >>> spectrum_distance(np.array([1.0, 3.0]), None, np.array([2.0, 4.0]), None)
    0.5
    """
    from scipy.stats import wasserstein_distance

    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    wa = np.ones_like(a) if weights_a is None else np.asarray(weights_a, dtype=np.float64)
    scale = float(np.sum(wa * np.abs(a)) / np.sum(wa))
    if scale == 0.0:
        return float("nan")
    return float(wasserstein_distance(a, b, wa, weights_b) / scale)


def checkpoint_row(
    *,
    step: int,
    kind: str,
    lr: float,
    result,
    hcfg,
    n_params: int,
    subset: int,
    threshold: float,
    lambda_max_train: float | None = None,
    preconditioned_sharpness: float | None = None,
    seconds: float,
) -> dict[str, Any]:
    """One hessian.csv row: the curvature ``result`` (a :class:`sane_cli.methods.CurvatureResult`) of ``subset``
    examples at ``step``, the settings of ``hcfg`` it was measured with, and the optimiser's side of it.

    The sharpness that the optimiser meets is ``preconditioned_sharpness`` where one is given (Adam's
    lambda_max(P^-1 H); NaN before its first step), else ``lambda_max_train``, the top eigenvalue of the whole
    training loss (given when the Hessian is of a subset; lambda_max otherwise). ``sharpness_ratio`` is it over
    the optimiser's stability ``threshold``: above 1, the optimiser is unstable along the top direction.
    """
    lambda_max_train = result.row["lambda_max"] if lambda_max_train is None else lambda_max_train
    sharpness = lambda_max_train if preconditioned_sharpness is None else preconditioned_sharpness
    row = {
        "step": step, "lr": lr, "method": result.method, "dtype": result.dtype, "n_params": n_params,
        "subset": subset, **{c: hcfg[c] for c in SETTING_COLUMNS}, **result.row,
        "lambda_max_train": lambda_max_train,
        "preconditioned_sharpness": float("nan") if preconditioned_sharpness is None else preconditioned_sharpness,
        "stability_threshold": threshold, "sharpness_ratio": sharpness / threshold, "seconds": round(seconds, 4),
        "kind": kind,
    }  # fmt: skip
    return {c: row[c] for c in HESSIAN_COLUMNS}
