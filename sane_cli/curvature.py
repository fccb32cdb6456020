"""Curvature: the exact Hessian of the mean training loss and its spectrum.

The Hessian is built column block by column block as Hessian-vector products with the unit vectors,
by reverse-over-reverse differentiation: the gradient's graph is recorded once per data chunk, and
its vector-Jacobian product is vmapped over a block of unit vectors (measured faster than
forward-over-reverse on these MLPs on the CPU, see benchmarks/exact_hessian.py).

Parameters are ordered as ``model.parameters()`` yields them, which for :class:`sane_cli.models.MLP`
is layer by layer, input to output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_function(name: str, n_classes: int) -> LossFn:
    """Mean loss over a batch of logits (n, C) and integer labels (n,).

    ``cross_entropy``: softmax cross-entropy. ``mse``: 0.5 * ||logits - onehot(y)||^2 summed over classes,
    averaged over the batch (its Hessian in the logits is the identity per sample).
    """
    if name == "cross_entropy":
        return nn.functional.cross_entropy
    if name == "mse":

        def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = nn.functional.one_hot(y, n_classes).to(logits.dtype)
            return 0.5 * (logits - target).pow(2).sum(dim=1).mean()

        return mse
    raise ValueError(f"unknown loss {name!r}")


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one detached vector, in ``model.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def hessian(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    block: int = 64,
    max_rows: int = 4096,
) -> torch.Tensor:
    """The dense Hessian (P, P) of ``loss_fn(model(x), y)``, the mean loss over the n examples.

    The model is evaluated in eval mode on a copy cast to ``dtype``; the model itself is untouched.
    ``block`` unit vectors are processed at once, and the data in chunks of at most ``max_rows``
    examples, so memory stays bounded by about block * max_rows * (sum of layer widths) numbers.
    """
    net = _copy_for_curvature(model, dtype)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = [p for p in net.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    n_params, n = theta.numel(), len(y)
    x = x.to(device=theta.device, dtype=dtype)
    y = y.to(theta.device)

    def unflatten(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.view(s) for k, v, s in zip(names, t.split(sizes), shapes, strict=True)}

    h = torch.zeros(n_params, n_params, dtype=dtype, device=theta.device)
    for start in range(0, n, max_rows):
        xb, yb = x[start : start + max_rows], y[start : start + max_rows]
        weight = len(yb) / n  # the chunk's share of the mean loss

        def chunk_loss(t: torch.Tensor, xb=xb, yb=yb, weight=weight) -> torch.Tensor:
            return loss_fn(functional_call(net, unflatten(t), (xb,)), yb) * weight

        _, grad_vjp = vjp(grad(chunk_loss), theta)
        columns = vmap(grad_vjp)
        for j in range(0, n_params, block):
            m = min(block, n_params - j)
            unit = torch.zeros(m, n_params, dtype=dtype, device=theta.device)
            unit[torch.arange(m), torch.arange(j, j + m)] = 1.0
            h[j : j + m] += columns(unit)[0]
    # Symmetric up to rounding; symmetrise so that eigensolvers see an exactly symmetric matrix.
    return 0.5 * (h + h.T)


def _copy_for_curvature(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    net = copy.deepcopy(model).to(dtype)
    net.eval()
    return net


@dataclass
class Spectrum:
    """All eigenvalues of a symmetric matrix, descending, and the eigenvectors of the largest ones."""

    eigenvalues: np.ndarray  # (P,) float64, descending
    eigenvectors: np.ndarray  # (P, k) columns, eigenvectors[:, i] belongs to eigenvalues[i]


def spectrum(h: torch.Tensor, topk_vectors: int = 0) -> Spectrum:
    """Every eigenvalue of the symmetric ``h`` and the eigenvectors of the ``topk_vectors`` largest.

    On the CPU this reduces ``h`` to tridiagonal form once (LAPACK sytrd), takes all eigenvalues of the
    tridiagonal matrix, and the top eigenvectors by inverse iteration mapped back through the
    Householder reflectors: about the cost of the eigenvalues alone, where a full ``eigh`` computing
    every eigenvector costs several times more. On CUDA, ``torch.linalg.eigh``.
    """
    p = h.shape[0]
    k = min(int(topk_vectors), p)
    if h.device.type != "cpu":
        if k == 0:
            vals = torch.linalg.eigvalsh(h).flip(0)
            return Spectrum(vals.double().cpu().numpy(), np.zeros((p, 0)))
        vals, vecs = torch.linalg.eigh(h)
        return Spectrum(vals.flip(0).double().cpu().numpy(), vecs[:, -k:].flip(1).double().cpu().numpy())
    return _spectrum_lapack(h.numpy(), k)


def _spectrum_lapack(a: np.ndarray, k: int) -> Spectrum:
    import scipy.linalg as sl
    from scipy.linalg import lapack

    p = a.shape[0]
    if p == 1:
        return Spectrum(a[0].astype(np.float64).copy(), np.ones((1, k)))
    sytrd, sytrd_lwork = lapack.get_lapack_funcs(("sytrd", "sytrd_lwork"), (a,))
    lwork, _ = sytrd_lwork(p, lower=1)
    # a = Q T Q^T with T tridiagonal (diagonal d, off-diagonal e); Q = H(1)...H(p-1), reflectors in c.
    c, d, e, tau, info = sytrd(a, lower=1, lwork=int(lwork))
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK sytrd failed with info={info}")
    vals = sl.eigvalsh_tridiagonal(d, e)[::-1].astype(np.float64)
    if k == 0:
        return Spectrum(vals.copy(), np.zeros((p, 0)))
    _, z = sl.eigh_tridiagonal(d, e, select="i", select_range=(p - k, p - 1))
    z = z[:, ::-1].astype(a.dtype)  # descending, like vals
    # x = Q z = H(1) (H(2) (... H(p-1) z)), H(i) = I - tau_i v_i v_i^T, v_i = (0,...,0, 1, c[i+2:, i]).
    for i in range(p - 2, -1, -1):
        v = np.empty(p - i - 1, dtype=a.dtype)
        v[0] = 1.0
        v[1:] = c[i + 2 :, i]
        z[i + 1 :] -= np.outer(tau[i] * v, v @ z[i + 1 :])
    return Spectrum(vals.copy(), z.astype(np.float64))


def timed_spectrum(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *, dtype: torch.dtype, topk_vectors: int
) -> tuple[Spectrum, float]:
    """Hessian on (x, y) and its spectrum, with the seconds both took."""
    start = time.perf_counter()
    h = hessian(model, loss_fn, x, y, dtype=dtype)
    spec = spectrum(h, topk_vectors)
    return spec, time.perf_counter() - start
