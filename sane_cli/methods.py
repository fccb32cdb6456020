"""One curvature checkpoint by the configured method: exact, the layer-ordered approximations
(block_diag, block_band), or the iterative ones (lanczos, slq), and ``auto``'s choice among them.

Every method returns the same record (:class:`CurvatureResult`): what hessian.csv needs of the spectrum,
with standard errors for estimates (0 for exact computations) and whether an iterative solver converged. The
optimiser's side of a checkpoint (its stability threshold and the sharpness ratio) is added by
:func:`sane_cli.measures.checkpoint_row`.

With ``hessian.layers``, each checkpoint also measures every layer on its own: the diagonal block of the
Hessian that belongs to the layer's parameters (:func:`sane_cli.curvature.parameter_groups`), with
lambda_max, trace, N_eff and SANE of the block, SANE both at the block's own scale and at the whole net's
(:func:`layer_rows`, written to layers.csv). The exact methods take the blocks from the matrix they built;
the iterative ones run on each block's Hessian-vector products.

Adding a method: a function ``(model, loss_fn, x, y, hcfg, dtype) -> Measured`` here, an entry in
:data:`METHODS` (with the memory it needs, checked before a run starts), its ``conf/hessian/<name>.yaml`` and
its tests against the dense reference Hessian.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import budget, checks, costs, distributed
from .curvature import (
    dense_operator,
    hessian,
    layer_count,
    layer_hessian,
    layer_hessian_blocks,
    layer_sizes,
    parameter_groups,
    spectrum,
)
from .errors import UsageError
from .iterative import hutchinson, hvp_operator, lanczos, slq
from .losses import LossFn
from .measures import MODES, kth_largest, laplace_log_evidence, magnitudes, n_eff, spectrum_summary
from .models import is_layered, n_parameters
from .records import ADDED_KEYS, LAYER_COLUMNS

DTYPES = {"float64": torch.float64, "float32": torch.float32}
REORTHS = ("none", "selective", "full")  # SLQ's reorthogonalisation (sane_cli.iterative.slq)


class Measured(NamedTuple):
    """What a method returns of one checkpoint."""

    eigenvalues: np.ndarray  # descending: every eigenvalue (exact, block_*) or the top Ritz values
    eigenvectors: np.ndarray  # (P, topk_vectors) columns
    row: dict  # hessian.csv's values (CurvatureResult.row)
    arrays: dict  # extra arrays for the spectra file
    scale: float  # SANE's scale of the net: rho x its k-th largest |eigenvalue| (or clipped)
    blocks: list[np.ndarray] | None = None  # each layer's diagonal block's eigenvalues, where the method has them
    operator: tuple | None = None  # (matvec, P): the Hessian-vector products it ran on, for the layers' blocks


@dataclass
class CurvatureResult:
    method: str  # the method that ran (auto resolved)
    dtype: str  # the precision it ran in
    eigenvalues: np.ndarray  # descending: every eigenvalue (exact, block_*) or the top Ritz values (lanczos, slq)
    eigenvectors: np.ndarray  # (P, topk_vectors) columns
    # lambda_max, lambda_min, trace, trace_se, n_negative (n_negative_se, negative_below), n_eff, n_eff_se, sane,
    # sane_se, converged
    row: dict
    seconds: float
    arrays: dict = field(default_factory=dict)  # extra arrays for the spectra file (SLQ nodes and weights)
    layers: list[dict] = field(default_factory=list)  # one row per layer (layer_rows); empty unless asked for


def resolve_method(hcfg, model: nn.Module, n_params: int, *, n: int, input_shape: tuple[int, ...]) -> str:
    """The method a checkpoint of ``model`` on ``n`` examples of ``input_shape`` runs: ``hcfg.method``, or for
    ``auto`` its choice (:func:`auto_choice`). The layer-ordered methods need a layered model."""
    method = hcfg.method
    if method == "auto":
        return auto_choice(hcfg, model, n_params, n=n, input_shape=input_shape)[0]
    if METHODS[method].layered and not is_layered(model):
        raise UsageError(
            f"hessian.method={method} needs a model with a layer-structured build (model=mlp or cnn) for its layer "
            f"blocks; {type(model).__name__} has none: use hessian=auto, exact or slq"
        )
    return method


def auto_choice(hcfg, model: nn.Module, n_params: int, *, n: int, input_shape: tuple[int, ...]) -> tuple[str, str]:
    """``auto``'s method and why: exact where it has at most ``hessian.exact_max_params`` parameters, its dense
    matrix fits in this machine's memory, and its checkpoint is estimated to cost at most twice SLQ's in
    ``hessian.auto_slq_dtype`` (:mod:`sane_cli.costs`, counted from the model's shapes and n, so the choice is
    the same for every run of a config; exact has no error, SLQ's estimates a few percent); else SLQ.
    ``model`` may live on the meta device."""
    if n_params > int(hcfg.exact_max_params):
        return "slq", f"{n_params:,} parameters, above hessian.exact_max_params={hcfg.exact_max_params}"
    have = physical_memory()
    need = _dense_memory(hcfg, model, n_params, have)[0]
    if need > have:
        return "slq", f"the dense Hessian needs about {need / 2**30:,.0f} GiB, this machine has {have / 2**30:.0f}"
    try:
        est = costs.estimate(model, input_shape, n, hcfg)
    except Exception:  # a model of the user's that cannot run on the meta device: count products instead
        products = int(hcfg.probes) * int(hcfg.steps)
        return ("exact" if n_params <= products else "slq"), f"{n_params:,} products against slq's {products:,}"
    return ("exact" if est.exact <= costs.EXACT_PREMIUM * est.slq else "slq"), f"estimated per checkpoint: {est}"


LONG_CHECKPOINT = 600.0  # seconds: a run whose checkpoints are estimated longer says so when it starts


def long_checkpoint(hcfg, model: nn.Module, method: str, *, n: int, input_shape: tuple[int, ...]) -> str | None:
    """A warning when one checkpoint by ``method`` (as resolved; exact or slq) is estimated to take more than
    :data:`LONG_CHECKPOINT`, naming the keys that shorten it; else None (also where nothing is estimated)."""
    if method not in ("exact", "slq"):
        return None
    try:
        est = costs.estimate(model, input_shape, n, hcfg, slq_dtype=precision(hcfg, method))
    except Exception:  # a model that cannot run on the meta device: no estimate
        return None
    seconds = est.exact if method == "exact" else est.slq
    if seconds <= LONG_CHECKPOINT:
        return None
    return (
        f"each curvature checkpoint ({method}, {n:,} examples) is estimated at about {seconds / 60:,.0f} min; "
        f"hessian.subset=<examples> measures fewer examples, hessian.every=<steps> takes fewer checkpoints"
    )


def precision(hcfg, method: str) -> str:
    """The dtype name ``method`` (as resolved) runs in: ``hcfg.dtype``, but ``hcfg.auto_slq_dtype`` for
    ``auto``'s SLQ branch."""
    return hcfg.auto_slq_dtype if hcfg.method == "auto" and method == "slq" else hcfg.dtype


def layers_wanted(hcfg, method: str) -> bool:
    """Whether a checkpoint by ``method`` (as resolved) measures every layer too: ``hessian.layers`` true, or
    ``auto`` (the default) with a method whose layer blocks come with the matrix it builds (exact, block_diag,
    block_band: a fraction of its cost), not with lanczos or slq (a Lanczos or SLQ per layer: about as many
    times the cost as the net has layers). Configs written before the key existed measured no layers."""
    choice = hcfg.get("layers", ADDED_KEYS["hessian.layers"])
    return METHODS[method].whole if choice == "auto" else bool(choice)


def measure(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, hcfg) -> CurvatureResult:
    """The curvature of the mean loss over (x, y) at the model's current parameters, by ``hcfg.method``, and
    of each layer's diagonal block where :func:`layers_wanted`.

    Every method runs in ``hcfg.dtype`` except ``auto``'s SLQ branch, which runs in ``hcfg.auto_slq_dtype``
    (float32 by default: twice as fast, and float32's rounding, about 1e-7 relative, is far below SLQ's
    statistical and quadrature errors of a few percent). The precision used is recorded in ``dtype``."""
    start = time.perf_counter()
    n_params = n_parameters(model)
    world = distributed.current()  # a data-parallel job: (x, y) is this rank's shard, the choice rank 0's
    n = int(world.total(len(y)))
    method = world.broadcast(resolve_method(hcfg, model, n_params, n=n, input_shape=tuple(x.shape[1:])))
    dtype_name = precision(hcfg, method)
    wanted = layers_wanted(hcfg, method)
    out = METHODS[method].run(model, loss_fn, x, y, hcfg, DTYPES[dtype_name], wanted)
    row, arrays = out.row, dict(out.arrays)
    row.setdefault("log_evidence", float("nan"))  # exact spectra only
    # |theta|^2, with the spectrum the evidence framework's optimal prior precision (sane_cli.measures)
    row["weight_norm_sq"] = weight_norm_sq(model)
    row.setdefault("reorth", "")  # slq's reorthogonalisation; nothing to say for other methods
    layers = []
    if wanted:
        layers, layer_values = layer_rows(model, loss_fn, x, y, hcfg, DTYPES[dtype_name], method, out.scale,
                                          out.blocks, out.operator)  # fmt: skip
        if layer_values is not None:  # every block exact: its eigenvalues kept beside the net's
            arrays["layer_eigenvalues"] = np.concatenate(layer_values)
            arrays["layer_sizes"] = np.array([len(v) for v in layer_values])
    return CurvatureResult(method, dtype_name, out.eigenvalues, out.eigenvectors, row, time.perf_counter() - start,
                           arrays, layers)  # fmt: skip


def _exact(model, loss_fn, x, y, hcfg, dtype, layers=False) -> Measured:
    """Every eigenvalue of the true Hessian, and with them the Laplace evidence."""
    h = hessian(model, loss_fn, x, y, dtype=dtype)
    spec = spectrum(h, int(hcfg.topk_vectors))
    row = _exact_row(spec.eigenvalues, hcfg)
    row["log_evidence"] = _log_evidence(model, loss_fn, x, y, spec.eigenvalues, float(hcfg.prior_precision))
    blocks = _diagonal_spectra(h, model) if layers else None
    return Measured(spec.eigenvalues, spec.eigenvectors, row, {}, _scale(spec.eigenvalues, hcfg), blocks)


def _block_band(model, loss_fn, x, y, hcfg, dtype, layers=False) -> Measured:
    """Every eigenvalue of the Hessian with the blocks between layers more than ``hcfg.band`` apart dropped."""
    h = layer_hessian(model, loss_fn, x, y, dtype=dtype, band=int(hcfg.band))
    spec = spectrum(h, int(hcfg.topk_vectors))
    blocks = _diagonal_spectra(h, model) if layers else None  # the diagonal blocks are kept whole
    return Measured(spec.eigenvalues, spec.eigenvectors, _exact_row(spec.eigenvalues, hcfg), {},
                    _scale(spec.eigenvalues, hcfg), blocks)  # fmt: skip


def _block_diag(model, loss_fn, x, y, hcfg, dtype, layers=False) -> Measured:
    """The eigenvalues of each layer's diagonal block."""
    values, vectors, blocks = _block_diag_spectrum(model, loss_fn, x, y, dtype, int(hcfg.topk_vectors))
    return Measured(values, vectors, _exact_row(values, hcfg), {}, _scale(values, hcfg), blocks)


def _scale(values: np.ndarray, hcfg) -> float:
    """SANE's scale of a whole spectrum: rho x its k-th largest |eigenvalue| (or clipped)."""
    return float(hcfg.rho) * kth_largest(values, int(hcfg.k), hcfg.eig_mode)


def _diagonal_spectra(h: torch.Tensor, model: nn.Module) -> list[np.ndarray]:
    """The eigenvalues (descending) of each layer's diagonal block of the matrix ``h``."""
    starts = np.cumsum([0, *(size for *_, size in parameter_groups(model))])
    return [
        torch.linalg.eigvalsh(h[a:b, a:b]).flip(0).double().cpu().numpy()
        for a, b in zip(starts[:-1], starts[1:], strict=True)
    ]


@torch.no_grad()
def _log_evidence(model: nn.Module, loss_fn: LossFn, x, y, eigenvalues: np.ndarray, prior_precision: float) -> float:
    """:func:`sane_cli.measures.laplace_log_evidence` at the model's parameters, its loss over (x, y) in float64."""
    net = copy.deepcopy(model).double()
    total = sum(float(loss_fn(net(x[i : i + 4096].double()), y[i : i + 4096])) * len(y[i : i + 4096])
                for i in range(0, len(y), 4096))  # fmt: skip
    world = distributed.current()  # a data-parallel job: the sums over every rank's examples
    total, n = world.total(total), int(world.total(len(y)))
    return laplace_log_evidence(eigenvalues, n, total / n, weight_norm_sq(model), prior_precision)


def weight_norm_sq(model: nn.Module) -> float:
    """|theta|^2, the squared norm of all the model's parameters, in float64."""
    return float(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, hcfg) -> float:
    """The largest eigenvalue of the Hessian of the mean loss over (x, y), by Lanczos on Hessian-vector
    products in ``hcfg.dtype`` to ``hcfg.tol`` (a few dozen products; the data streamed in chunks)."""
    dtype = DTYPES[hcfg.dtype]
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=dtype)
    device = next(model.parameters()).device
    plan = _plan(hcfg, p, dtype, device, slq=False)
    top = lanczos(matvec, p, 1, tol=float(hcfg.tol), max_iter=plan.max_iter, seed=int(hcfg.seed), values_only=True,
                  dtype=dtype, device=device, store=plan.store, store_device=plan.store_device)  # fmt: skip
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

    plan = _plan(hcfg, p, dtype, device, slq=False)
    top = lanczos(scaled, p, 1, tol=float(hcfg.tol), max_iter=plan.max_iter, seed=int(hcfg.seed), values_only=True,
                  dtype=dtype, device=device, store=plan.store, store_device=plan.store_device)  # fmt: skip
    return float(top.values[0])


def _plan(hcfg, p: int, dtype, device, *, slq: bool, trace: bool = False) -> budget.Plan:
    """The memory plan of a checkpoint's Lanczos (and SLQ) on an operator of size P (sane_cli.budget); in a
    data-parallel job rank 0's, so that every rank runs the same steps."""
    world = distributed.current()
    plan = budget.checkpoint_plan(hcfg, p, dtype, device, slq=slq, trace=trace) if world.main else None
    return world.broadcast(plan)


def _top(matvec, p: int, hcfg, dtype, device, plan: budget.Plan, keep_basis: bool = False):
    """(the top eigenpairs of the operator by Lanczos, the row's extremes) shared by lanczos and slq;
    ``keep_basis``: with the run's Krylov basis (see :class:`sane_cli.iterative.Krylov`)."""
    wanted = max(int(hcfg.topk_vectors), int(hcfg.k), int(hcfg.topk))
    top = lanczos(matvec, p, wanted, tol=float(hcfg.tol), max_iter=plan.max_iter, seed=int(hcfg.seed), dtype=dtype,
                  device=device, store=plan.store, store_device=plan.store_device,
                  keep_basis=keep_basis)  # fmt: skip
    row = {"lambda_max": float(top.values[0]), "lambda_min": top.lambda_min, "converged": top.converged}
    return top, row


def _deflation(top, p: int, hcfg):
    """The top eigenpairs that enter the traces exactly and are projected out of the probes (when P leaves
    room)."""
    return (top.values, top.vectors) if hcfg.deflate and len(top.values) < p else None


def _lanczos(model, loss_fn, x, y, hcfg, dtype, layers=False) -> Measured:
    """The top eigenpairs by Lanczos and a Hutchinson trace; no N_eff or SANE."""
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=dtype)
    top, row = _lanczos_estimates(matvec, p, hcfg, dtype, next(model.parameters()).device)
    scale = _top_scale(top, hcfg)
    return Measured(top.values, top.vectors[:, : int(hcfg.topk_vectors)], row, {}, scale, operator=(matvec, p))


def _lanczos_estimates(matvec, p: int, hcfg, dtype, device):
    """(the top eigenpairs, the row) of lanczos on an operator of size P; the trace by Hutchinson deflated by the
    top eigenpairs' whole Krylov space (tr V^T H V exactly, the probes projected off V)."""
    deflate = bool(hcfg.deflate)
    plan = _plan(hcfg, p, dtype, device, slq=False, trace=True)
    top, row = _top(matvec, p, hcfg, dtype, device, plan, keep_basis=deflate)
    trace, trace_se = hutchinson(matvec, p, probes=int(hcfg.probes), seed=int(hcfg.seed),
                                 deflate=top.krylov if deflate else None, dtype=dtype, device=device)  # fmt: skip
    top.krylov = None  # the basis is not kept beyond the trace
    nan = float("nan")
    row.update(trace=trace, trace_se=trace_se, n_negative=nan, n_negative_se=nan, negative_below=nan, n_eff=nan,
               n_eff_se=nan, n_eff_bound=nan, sane=nan, sane_se=nan, sane_bound=nan)  # fmt: skip
    return top, row


def _top_scale(top, hcfg) -> float:
    """SANE's scale from the top eigenpairs: rho x the k-th largest |eigenvalue| (abs) or the k-th largest
    eigenvalue clipped at 0 (clip)."""
    largest = top.magnitudes if hcfg.eig_mode == "abs" else np.clip(top.values, 0.0, None)
    k = min(int(hcfg.k), len(largest))
    return float(hcfg.rho) * float(largest[k - 1])


def _slq(model, loss_fn, x, y, hcfg, dtype, layers=False) -> Measured:
    """Stochastic Lanczos quadrature: trace, N_eff, SANE and the negative count as tr f(H), with standard
    errors and bounds on the quadrature's bias; SANE's scale from the top eigenpairs."""
    matvec, p = hvp_operator(model, loss_fn, x, y, dtype=dtype)
    top, row, quad = _slq_estimates(matvec, p, hcfg, dtype, next(model.parameters()).device)
    arrays = {"slq_nodes": quad.nodes, "slq_weights": quad.weights}
    scale = _top_scale(top, hcfg)
    return Measured(top.values, top.vectors[:, : int(hcfg.topk_vectors)], row, arrays, scale, operator=(matvec, p))


def _slq_estimates(matvec, p: int, hcfg, dtype, device):
    """(the top eigenpairs, the row, the quadrature) of slq on an operator of size P, within the memory plan."""
    plan = _plan(hcfg, p, dtype, device, slq=True)
    top, row = _top(matvec, p, hcfg, dtype, device, plan)
    quad = slq(matvec, p, probes=int(hcfg.probes), steps=plan.steps, seed=int(hcfg.seed),
               reorthogonalize=hcfg.reorth == "full", reproject=hcfg.reorth == "selective",
               deflate=_deflation(top, p, hcfg), dtype=dtype, device=device, group=plan.group,
               store=plan.store, store_device=plan.store_device)  # fmt: skip
    mode, scale = hcfg.eig_mode, _top_scale(top, hcfg)
    trace, trace_se = quad.trace_of(lambda t: t)
    n_eff, n_eff_se = quad.trace_of(lambda t: _ratio(t, float(hcfg.alpha), mode))
    sane, sane_se = quad.trace_of(lambda t: _ratio(t, scale, mode)) if scale > 0 else (0.0, 0.0)
    n_neg, n_neg_se, below = _negative_count(quad, row)
    n_eff_bound = _bias_bound(quad, n_eff, float(hcfg.alpha), hcfg)
    sane_bound = _bias_bound(quad, sane, scale, hcfg) if scale > 0 else 0.0
    row.update(trace=trace, trace_se=trace_se, n_negative=n_neg, n_negative_se=n_neg_se, negative_below=below,
               n_eff=n_eff, n_eff_se=n_eff_se, n_eff_bound=n_eff_bound, sane=sane, sane_se=sane_se,
               sane_bound=sane_bound, reorth=hcfg.reorth)  # fmt: skip
    return top, row, quad


def _negative_count(quad, row: dict) -> tuple[float, float, float]:
    """(estimate, standard error, threshold d) of the number of eigenvalues below -d, d the quadrature's
    resolution: the spectrum's width (lambda_max - lambda_min, from Lanczos and the Gauss nodes) over the
    Lanczos steps. A Gauss rule of m nodes cannot place eigenvalues closer than about width / m, so the count
    below 0 itself splits the mass near 0 (the bulk of a trained net's spectrum) across the sign at random; the
    count below -d leaves it out, and is that of a closed form's to within its standard error (tested)."""
    low = min(float(row["lambda_min"]), float(quad.nodes.min()), *quad.deflated.tolist())
    high = max(float(row["lambda_max"]), float(quad.nodes.max()), *quad.deflated.tolist())
    below = (high - low) / quad.alphas.shape[1]
    count, se = quad.trace_of(lambda t: (t < -below).astype(float))
    return count, se, below


def _ratio(t: np.ndarray, a: float, mode: str) -> np.ndarray:
    """m / (m + a) elementwise, m = |t| (or clipped): the summand of N_eff and SANE."""
    m = magnitudes(t, mode)
    return m / (m + a)


LAYER_VALUES = LAYER_COLUMNS[LAYER_COLUMNS.index("layer") :]  # a layer's row, without its checkpoint's step and kind


def layer_rows(
    model: nn.Module, loss_fn: LossFn, x, y, hcfg, dtype, method: str, net_scale: float, blocks=None, operator=None
) -> tuple[list[dict], list[np.ndarray] | None]:
    """One row per layer (:func:`sane_cli.curvature.parameter_groups`, input to output) of the diagonal block
    H_ll of the Hessian that belongs to its parameters: lambda_max, lambda_min, trace, n_negative, N_eff at
    ``hessian.alpha``, SANE at the block's own scale (rho x the block's k-th largest |eigenvalue|, k at most
    the block's size) and ``sane_net``, SANE at the whole net's scale ``net_scale`` (so that the layers' values
    add up to no more than the net's block-diagonal SANE). And the blocks' eigenvalues where every block was
    exact, else None.

    The blocks' eigenvalues come from ``blocks`` where the method built them (exact, block_diag, block_band).
    Otherwise each block is measured through the Hessian-vector products (``operator``, the (matvec, P) the
    method ran on, or built here) restricted to it: exactly, from one product per parameter, while the block
    has no more parameters than the products an SLQ would spend (``probes`` x ``steps``, and at most
    ``exact_max_params``); above that by ``method``, slq (estimates with standard errors) or lanczos
    (lambda_max and a trace only).
    """
    groups = parameter_groups(model)
    if blocks is not None:
        pairs = enumerate(zip(groups, blocks, strict=True))
        return [_block_row(j, group, values, hcfg, net_scale, dtype) for j, (group, values) in pairs], blocks
    matvec, p = operator if operator is not None else hvp_operator(model, loss_fn, x, y, dtype=dtype)
    device = next(model.parameters()).device
    starts = np.cumsum([0, *(size for *_, size in groups)]).tolist()
    rows, exact = [], []
    for j, group in enumerate(groups):
        a, b = starts[j], starts[j + 1]

        def block(v: torch.Tensor, a=a, b=b) -> torch.Tensor:
            full = torch.zeros(len(v), p, dtype=v.dtype, device=v.device)
            full[:, a:b] = v
            return matvec(full)[:, a:b]

        if b - a <= min(int(hcfg.exact_max_params), int(hcfg.probes) * int(hcfg.steps)):
            h = dense_operator(block, b - a, dtype=dtype, device=device)
            values = torch.linalg.eigvalsh(h).flip(0).double().cpu().numpy()
            rows.append(_block_row(j, group, values, hcfg, net_scale, dtype))
            exact.append(values)
            continue
        if method == "lanczos":
            _, row = _lanczos_estimates(block, b - a, hcfg, dtype, device)
            row.update(sane_net=float("nan"), sane_net_se=float("nan"))
        else:
            _, row, quad = _slq_estimates(block, b - a, hcfg, dtype, device)
            row["sane_net"], row["sane_net_se"] = (
                quad.trace_of(lambda t: _ratio(t, net_scale, hcfg.eig_mode)) if net_scale > 0 else (0.0, 0.0)
            )
        rows.append(_layer_row(j, group, method, row))
    return rows, exact if len(exact) == len(groups) else None


def _block_row(j: int, group: tuple[str, str, int], values: np.ndarray, hcfg, net_scale: float, dtype) -> dict:
    """A layer's row from every eigenvalue of its block (computed in ``dtype``)."""
    k = min(int(hcfg.k), len(values))
    eps = torch.finfo(dtype).eps
    row = spectrum_summary(values, alpha=hcfg.alpha, rho=hcfg.rho, k=k, mode=hcfg.eig_mode, eps=eps)
    row["sane_net"] = n_eff(values, alpha=net_scale, mode=hcfg.eig_mode) if net_scale > 0 else 0.0
    row.update(trace_se=0.0, n_eff_se=0.0, sane_se=0.0, sane_net_se=0.0, converged=True)
    return _layer_row(j, group, "exact", row)


def _layer_row(j: int, group: tuple[str, str, int], method: str, row: dict) -> dict:
    name, kind, size = group
    row = {"layer": j + 1, "module": name, "module_type": kind, "params": size, "method": method, **row}
    return {c: row[c] for c in LAYER_VALUES}


def _bias_bound(quad, estimate: float, a: float, hcfg) -> float:
    """A bound on the quadrature error (the bias) of SLQ's estimate of sum_i |lambda_i| / (|lambda_i| + a): its
    distance to the far end of :meth:`Quadrature.bracket_of`. The bracket holds for eig_mode abs with the
    Lanczos vectors kept orthogonal (reorth full); NaN otherwise."""
    if hcfg.eig_mode != "abs" or hcfg.reorth != "full":
        return float("nan")
    lower, upper = quad.bracket_of(lambda t: t / (t + a))
    return max(upper - estimate, estimate - lower, 0.0)


def _exact_row(values: np.ndarray, hcfg) -> dict:
    eps = torch.finfo(DTYPES[hcfg.dtype]).eps  # the exact methods run in hessian.dtype
    row = spectrum_summary(values, alpha=hcfg.alpha, rho=hcfg.rho, k=hcfg.k, mode=hcfg.eig_mode, eps=eps)
    zero = {"trace_se": 0.0, "n_eff_se": 0.0, "n_eff_bound": 0.0, "sane_se": 0.0, "sane_bound": 0.0}
    return {**row, **zero, "converged": True}


def _block_diag_spectrum(model, loss_fn, x, y, dtype, k: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Eigenvalues of the block-diagonal Hessian (the union of each layer block's), the top-k eigenvectors,
    each supported on one layer's parameters, and each block's eigenvalues (descending)."""
    blocks = layer_hessian_blocks(model, loss_fn, x, y, dtype=dtype, band=0)
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
    return np.sort(np.concatenate(values))[::-1], vectors, values


def _block_bytes(model: nn.Module, size: int) -> int:
    """Every layer block, and eigh's copy and workspace for the largest."""
    blocks = layer_sizes(model)
    return size * (sum(b**2 for b in blocks) + 2 * max(blocks, default=0) ** 2)


def _dense_memory(hcfg, model, n_params: int, have: int) -> tuple[int, str, str]:
    size = DTYPES[hcfg.dtype].itemsize
    block_diag = " or hessian=block_diag" if is_layered(model) and _block_bytes(model, size) <= have else ""
    need = 3 * size * n_params**2  # the matrix, eigh's copy and workspace
    return need, f"the dense Hessian of {n_params} parameters", f"use hessian=auto, hessian=slq{block_diag}"


def _block_memory(hcfg, model, n_params: int, have: int) -> tuple[int, str, str]:
    largest = max(layer_sizes(model), default=0)
    return _block_bytes(model, DTYPES[hcfg.dtype].itemsize), f"the layer blocks (largest {largest} parameters)", \
        "use hessian=auto or hessian=slq"  # fmt: skip


@dataclass(frozen=True)
class MethodSpec:
    """A curvature method: what it computes, the memory it needs (checked before a run starts), whether it needs
    a layered model's blocks, and whether it builds the matrix whole."""

    run: Callable[..., Measured]  # (model, loss_fn, x, y, hcfg, dtype, layers) -> Measured (layers: keep blocks)
    memory: Callable[..., tuple[int, str, str]] | None = None  # (hcfg, model, P, bytes here) -> (bytes, what, fix)
    layered: bool = False
    # builds the matrix (or its blocks) and diagonalises it: every eigenvalue, saved in spectra/, and the layers'
    # blocks come with it (hessian.layers=auto measures them); otherwise the top Ritz values of a Lanczos run
    whole: bool = False


METHODS = checks.Registry("hessian.method", {
    "exact": MethodSpec(_exact, _dense_memory, whole=True),
    "block_diag": MethodSpec(_block_diag, _block_memory, layered=True, whole=True),
    "block_band": MethodSpec(_block_band, _dense_memory, layered=True, whole=True),
    "lanczos": MethodSpec(_lanczos),
    "slq": MethodSpec(_slq),
})  # fmt: skip
CHOICES = ("auto", *METHODS)  # hessian.method: a method, or auto's choice between exact and slq


def physical_memory() -> int:
    """Bytes of memory this machine has: what the dense methods' needs are checked against."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(hcfg, model: nn.Module, n: int, input_shape: tuple[int, ...], device=None) -> None:
    """The method (auto resolved for ``n`` examples of ``input_shape``) fits in this machine's memory: the dense
    Hessian (exact, block_band), its layer blocks (block_diag), or Lanczos's and SLQ's vectors in some plan
    within ``hessian.memory_gb`` or the free memory of ``device`` (the CPU by default; sane_cli.budget).
    ``model`` may live on the meta device (sizes only).

    Raises:
        UsageError: naming the method, the memory it needs, what for, and the fix.
    """
    n_params = n_parameters(model)
    method = resolve_method(hcfg, model, n_params, n=n, input_shape=input_shape)
    if method in ("lanczos", "slq"):  # the Lanczos vectors within hessian.memory_gb (sane_cli.budget)
        dtype, slq = DTYPES[precision(hcfg, method)], method == "slq"
        budget.device_plan(hcfg, n_params, dtype, device or torch.device("cpu"), slq=slq, trace=not slq)
    memory = METHODS[method].memory
    if memory is None:
        return
    have = physical_memory()
    need, what, fix = memory(hcfg, model, n_params, have)
    if need > have:
        raise UsageError(
            f"hessian.method={method} needs about {need / 2**30:,.0f} GiB for {what} (this machine has "
            f"{have / 2**30:.0f} GiB); {fix}"
        )


def check_config(cfg) -> None:
    """The ``hessian`` group's keys of a run config (and that a layer-ordered method has a layered model).
    ``hessian.reorth`` true / false (older configs) are rewritten as full / none."""
    from omegaconf import OmegaConf, open_dict

    from .models import MODELS

    checks.choice(cfg, "hessian.method", CHOICES)
    method = cfg.hessian.method
    layered = [n for n, m in MODELS.items() if getattr(m.cls, "layered", False)]
    if method != "auto" and METHODS[method].layered and cfg.model.name not in layered:
        takes = ", ".join(n for n in CHOICES if n == "auto" or not METHODS[n].layered)
        checks.fail("hessian.method", method, f"needs a model of layer blocks ({', '.join(layered)}); "
                    f"model={cfg.model.name} takes {takes}")  # fmt: skip
    for key in ("every", "k", "topk", "max_iter", "spike_after", "exact_max_params"):
        checks.number(cfg, f"hessian.{key}", minimum=1, integer=True)
    for key in ("topk_vectors", "band", "seed", "spike_max"):
        checks.number(cfg, f"hessian.{key}", minimum=0, integer=True)
    checks.number(cfg, "hessian.subset", minimum=1, integer=True, optional=True)  # null: the whole training set
    for key in ("alpha", "rho", "tol", "spike_threshold", "prior_precision"):
        checks.number(cfg, f"hessian.{key}", minimum=0, strict=True)
    checks.number(cfg, "hessian.probes", minimum=2, integer=True)
    checks.number(cfg, "hessian.steps", minimum=1, integer=True)
    if "memory_gb" in cfg.hessian:  # an older run config lacks it (records.ADDED_KEYS: the free memory)
        checks.number(cfg, "hessian.memory_gb", minimum=0, strict=True, optional=True)
    checks.choice(cfg, "hessian.dtype", DTYPES)
    checks.choice(cfg, "hessian.auto_slq_dtype", DTYPES)
    checks.choice(cfg, "hessian.eig_mode", MODES)
    reorth = OmegaConf.select(cfg, "hessian.reorth")
    if isinstance(reorth, bool):  # true / false (older configs): full / none
        with open_dict(cfg):
            cfg.hessian.reorth = "full" if reorth else "none"
    checks.choice(cfg, "hessian.reorth", REORTHS)
    checks.flag(cfg, "hessian.deflate")
    checks.flag(cfg, "hessian.on_spike")
    if "at_start" in cfg.hessian:  # an older run config lacks it (records.ADDED_KEYS: a checkpoint at step 0)
        checks.flag(cfg, "hessian.at_start")
    if "layers" not in cfg.hessian:  # a config from before the key: it measured no layers
        with open_dict(cfg):
            cfg.hessian.layers = ADDED_KEYS["hessian.layers"]
    layers = cfg.hessian.layers
    if not isinstance(layers, bool) and layers != "auto":
        checks.fail("hessian.layers", layers, "must be auto, true or false")
