"""One curvature checkpoint by the configured method: exact, the layer-ordered approximations
(block_diag, block_band), or the iterative ones (lanczos, slq), and ``auto``'s choice among them.

Every method returns the same record (:class:`CurvatureResult`): what hessian.csv needs, with standard
errors for estimates (0 for exact computations) and whether an iterative solver converged.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .curvature import LossFn, hessian, layer_count, mlp_hessian, mlp_hessian_blocks, spectrum
from .iterative import hutchinson, hvp_operator, lanczos, slq
from .measures import laplace_log_evidence, magnitudes, spectrum_summary
from .models import MLP

METHODS = ("exact", "block_diag", "block_band", "lanczos", "slq", "auto")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class CurvatureResult:
    method: str  # the method that ran (auto resolved)
    dtype: str  # the precision it ran in
    eigenvalues: np.ndarray  # descending: every eigenvalue (exact, block_*) or the top Ritz values (lanczos, slq)
    eigenvectors: np.ndarray  # (P, topk_vectors) columns
    row: dict  # lambda_max, lambda_min, trace, trace_se, n_negative, n_eff, n_eff_se, sane, sane_se, converged
    seconds: float
    arrays: dict = field(default_factory=dict)  # extra arrays for the spectra file (SLQ nodes and weights)


def resolve_method(hcfg, model: nn.Module, n_params: int) -> str:
    """``auto``: exact while its cost stays within seconds, else SLQ (its Hessian-vector products in
    ``hessian.auto_slq_dtype``, see :func:`measure`). An MLP's exact Hessian has a layer-structured build (about
    P^3 for the eigenvalues): exact up to ``hessian.exact_max_params`` parameters. Other models (the CNN) build
    it from P Hessian-vector products: exact only while P is at most the products SLQ would spend,
    ``hessian.probes`` x ``hessian.steps`` (2,400 by default), and ``exact_max_params``. Other methods are
    returned as given; the layer-ordered ones need an MLP."""
    method = hcfg.method
    if method == "auto":
        limit = int(hcfg.exact_max_params)
        if not isinstance(model, MLP):
            limit = min(limit, int(hcfg.probes) * int(hcfg.steps))
        return "exact" if n_params <= limit else "slq"
    if method in ("block_diag", "block_band") and not isinstance(model, MLP):
        raise ValueError(f"hessian.method={method} needs an MLP (its layer blocks)")
    return method


def precision(hcfg, method: str) -> str:
    """The dtype name ``method`` (as resolved) runs in: ``hcfg.dtype``, but ``hcfg.auto_slq_dtype`` for
    ``auto``'s SLQ branch."""
    return hcfg.auto_slq_dtype if hcfg.method == "auto" and method == "slq" else hcfg.dtype


def measure(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, hcfg, threshold: float
) -> CurvatureResult:
    """The curvature of the mean loss over (x, y) at the model's current parameters, by ``hcfg.method``;
    ``threshold`` is the optimiser's stability threshold that lambda_max is compared with.

    Every method runs in ``hcfg.dtype`` except ``auto``'s SLQ branch, which runs in ``hcfg.auto_slq_dtype``
    (float32 by default: twice as fast, and float32's rounding, about 1e-7 relative, is far below SLQ's
    statistical and quadrature errors of a few percent). The precision used is recorded in ``dtype``."""
    start = time.perf_counter()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    method = resolve_method(hcfg, model, n_params)
    dtype_name = precision(hcfg, method)
    dtype, k_vec = DTYPES[dtype_name], int(hcfg.topk_vectors)
    arrays: dict = {}
    if method in ("exact", "block_band"):
        if method == "exact":
            h = hessian(model, loss_fn, x, y, dtype=dtype)
        else:
            h = mlp_hessian(model, loss_fn, x, y, dtype=dtype, band=int(hcfg.band))
        spec = spectrum(h, k_vec)
        values, vectors = spec.eigenvalues, spec.eigenvectors
        row = _exact_row(values, threshold, hcfg)
        if method == "exact":  # the whole spectrum of the true Hessian: the Laplace evidence
            row["log_evidence"] = _log_evidence(model, loss_fn, x, y, values, float(hcfg.prior_precision))
    elif method == "block_diag":
        values, vectors = _block_diag_spectrum(model, loss_fn, x, y, dtype, k_vec)
        row = _exact_row(values, threshold, hcfg)
    else:
        values, vectors, row, arrays = _iterative(method, model, loss_fn, x, y, hcfg, dtype, k_vec)
        row.update(stability_threshold=threshold, sharpness_ratio=row["lambda_max"] / threshold)
    row.setdefault("log_evidence", float("nan"))  # exact spectra only
    row.setdefault("reorth", "")  # slq's reorthogonalisation; nothing to say for other methods
    return CurvatureResult(method, dtype_name, values, vectors, row, time.perf_counter() - start, arrays)


@torch.no_grad()
def _log_evidence(model: nn.Module, loss_fn: LossFn, x, y, eigenvalues: np.ndarray, prior_precision: float) -> float:
    """:func:`sane_cli.measures.laplace_log_evidence` at the model's parameters, its loss over (x, y) in float64."""
    net = copy.deepcopy(model).double()
    total = sum(float(loss_fn(net(x[i : i + 4096].double()), y[i : i + 4096])) * len(y[i : i + 4096])
                for i in range(0, len(y), 4096))  # fmt: skip
    sq_norm = float(sum((p.double() ** 2).sum() for p in model.parameters()))
    return laplace_log_evidence(eigenvalues, len(y), total / len(y), sq_norm, prior_precision)


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, hcfg) -> float:
    """The largest eigenvalue of the Hessian of the mean loss over (x, y), by Lanczos on Hessian-vector
    products in ``hcfg.dtype`` to ``hcfg.tol`` (a few dozen products; the data streamed in chunks)."""
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=DTYPES[hcfg.dtype])
    device = next(model.parameters()).device
    top = lanczos(matvec, p, 1, tol=float(hcfg.tol), max_iter=int(hcfg.max_iter), seed=int(hcfg.seed),
                  values_only=True, dtype=DTYPES[hcfg.dtype], device=device)  # fmt: skip
    return float(top.values[0])


def preconditioned_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    hcfg,
    diagonal: list[torch.Tensor],
    weight_decay: float = 0.0,
) -> float:
    """lambda_max(P^-1 (H + weight_decay I)) for the diagonal preconditioner P (one tensor per parameter, see
    :func:`sane_cli.optim.preconditioner`) and H the Hessian of the mean loss over (x, y): the top eigenvalue
    of the symmetric P^-1/2 (H + weight_decay I) P^-1/2, which has the same eigenvalues, by Lanczos on
    Hessian-vector products in ``hcfg.dtype`` to ``hcfg.tol``."""
    dtype = DTYPES[hcfg.dtype]
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=dtype)
    device = next(model.parameters()).device
    scale = torch.cat([d.reshape(-1) for d in diagonal]).to(device=device, dtype=dtype).rsqrt()

    def scaled(v: torch.Tensor) -> torch.Tensor:
        u = v * scale
        return (matvec(u) + weight_decay * u) * scale

    top = lanczos(scaled, p, 1, tol=float(hcfg.tol), max_iter=int(hcfg.max_iter), seed=int(hcfg.seed),
                  values_only=True, dtype=dtype, device=device)  # fmt: skip
    return float(top.values[0])


def _iterative(method: str, model, loss_fn, x, y, hcfg, dtype, k_vec: int):
    """lanczos or slq on Hessian-vector products: (top Ritz values, top vectors, hessian.csv row, arrays)."""
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=dtype)
    device = next(model.parameters()).device
    seed, probes = int(hcfg.seed), int(hcfg.probes)
    top = lanczos(matvec, p, max(k_vec, int(hcfg.k), int(hcfg.topk)), tol=float(hcfg.tol),
                  max_iter=int(hcfg.max_iter), seed=seed, dtype=dtype, device=device)  # fmt: skip
    row = {"lambda_max": float(top.values[0]), "lambda_min": top.lambda_min, "converged": top.converged}
    nan = float("nan")
    # the top eigenpairs enter the traces exactly and are projected out of the probes (when P leaves room)
    deflate = (top.values, top.vectors) if hcfg.deflate and len(top.values) < p else None
    if method == "lanczos":
        trace, trace_se = hutchinson(matvec, p, probes=probes, seed=seed, deflate=deflate, dtype=dtype, device=device)
        row.update(trace=trace, trace_se=trace_se, n_negative=nan, n_eff=nan, n_eff_se=nan, n_eff_bound=nan, sane=nan,
                   sane_se=nan, sane_bound=nan)  # fmt: skip
        return top.values, top.vectors[:, :k_vec], row, {}
    quad = slq(matvec, p, probes=probes, steps=int(hcfg.steps), seed=seed, reorthogonalize=hcfg.reorth == "full",
               reproject=hcfg.reorth == "selective",
               deflate=deflate, dtype=dtype, device=device)  # fmt: skip
    mode = hcfg.eig_mode
    # SANE's scale: the k-th largest |eigenvalue| (abs) or the k-th largest eigenvalue clipped at 0 (clip)
    largest = top.magnitudes if hcfg.eig_mode == "abs" else np.clip(top.values, 0.0, None)
    scale = float(hcfg.rho) * float(largest[int(hcfg.k) - 1])
    trace, trace_se = quad.trace_of(lambda t: t)
    n_eff, n_eff_se = quad.trace_of(lambda t: magnitudes(t, mode) / (magnitudes(t, mode) + float(hcfg.alpha)))
    sane, sane_se = (
        quad.trace_of(lambda t: magnitudes(t, mode) / (magnitudes(t, mode) + scale)) if scale > 0 else (0.0, 0.0)
    )
    n_neg, _ = quad.trace_of(lambda t: (t < 0).astype(float))
    n_eff_bound = _bias_bound(quad, n_eff, float(hcfg.alpha), hcfg)
    sane_bound = _bias_bound(quad, sane, scale, hcfg) if scale > 0 else 0.0
    row.update(trace=trace, trace_se=trace_se, n_negative=n_neg, n_eff=n_eff, n_eff_se=n_eff_se,
               n_eff_bound=n_eff_bound, sane=sane, sane_se=sane_se, sane_bound=sane_bound,
               reorth=hcfg.reorth)  # fmt: skip
    return top.values, top.vectors[:, :k_vec], row, {"slq_nodes": quad.nodes, "slq_weights": quad.weights}


def _bias_bound(quad, estimate: float, a: float, hcfg) -> float:
    """A bound on the quadrature error (the bias) of SLQ's estimate of sum_i |lambda_i| / (|lambda_i| + a): its
    distance to the far end of :meth:`Quadrature.bracket_of`. The bracket holds for eig_mode abs with the
    Lanczos vectors kept orthogonal (reorth full); NaN otherwise."""
    if hcfg.eig_mode != "abs" or hcfg.reorth != "full":
        return float("nan")
    lower, upper = quad.bracket_of(lambda t: t / (t + a))
    return max(upper - estimate, estimate - lower, 0.0)


def _exact_row(values: np.ndarray, threshold: float, hcfg) -> dict:
    row = spectrum_summary(values, threshold=threshold, alpha=hcfg.alpha, rho=hcfg.rho, k=hcfg.k, mode=hcfg.eig_mode)
    zero = {"trace_se": 0.0, "n_eff_se": 0.0, "n_eff_bound": 0.0, "sane_se": 0.0, "sane_bound": 0.0}
    return {**row, **zero, "converged": True}


def _block_diag_spectrum(model, loss_fn, x, y, dtype, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the block-diagonal Hessian (the union of each layer block's), and the top-k
    eigenvectors, each supported on one layer's parameters."""
    blocks = mlp_hessian_blocks(model, loss_fn, x, y, dtype=dtype, band=0)
    sizes = [blocks[j, j].shape[0] for j in range(layer_count(model))]
    values, candidates = [], []  # (eigenvalue, layer, column) of each block's own top k
    for j, size in enumerate(sizes):
        spec = spectrum(blocks[j, j], min(k, size))
        values.append(spec.eigenvalues)
        candidates += [
            (v, j, c, spec.eigenvectors[:, c]) for c, v in enumerate(spec.eigenvalues[: spec.eigenvectors.shape[1]])
        ]
    starts = np.cumsum([0, *sizes])
    candidates.sort(key=lambda t: -t[0])
    vectors = np.zeros((starts[-1], min(k, len(candidates))))
    for c, (_, j, _, vec) in enumerate(candidates[: vectors.shape[1]]):
        vectors[starts[j] : starts[j + 1], c] = vec
    return np.sort(np.concatenate(values))[::-1], vectors
