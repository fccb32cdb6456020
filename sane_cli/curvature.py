"""Curvature: the exact Hessian of the mean training loss and its spectrum.

Two ways to build the exact Hessian, tested against each other and a dense torch.func reference:

* ``mlp_hessian`` (used for :class:`sane_cli.models.MLP`) exploits the layer structure. The gradient of
  layer l's weights is a sum over examples of outer products, g_l = sum_i delta_l,i (x) a~_l-1,i (the
  back-propagated error times the layer's input, with a 1 appended for the bias). Layer m's weights
  enter the loss only through its pre-activations z_m, so the rows of H for layer m against every
  layer l >= m follow from the derivatives of (delta_l, a~_l-1) along the w_m unit directions of z_m,
  forward-mode through the layers above m, one pass per *unit* rather than per parameter:

      H[l (r,s), m (p,q)] = sum_i (d_p delta_l,i[r] a~_l-1,i[s] + delta_l,i[r] d_p a~_l-1,i[s]) a~_m-1,i[q]

  The sum over examples is one matrix product per block; the blocks below the diagonal follow by symmetry.
* ``generic_hessian``, for any model: Hessian-vector products with the unit vectors by reverse-over-reverse
  differentiation, vmapped over a block of unit vectors.

Parameters are ordered as ``model.parameters()`` yields them, which for :class:`sane_cli.models.MLP`
is layer by layer, input to output (weight row-major, then bias).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]

# torch's forward-mode AD loads its decompositions through torch.jit.script on first use, which warns
# about torch.jit's deprecation on every run; the warning is torch's own business, not the user's.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


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
    max_rows: int = 4096,
) -> torch.Tensor:
    """The dense Hessian (P, P) of ``loss_fn(model(x), y)``, the mean loss over the n examples.

    The model is evaluated in eval mode on a copy cast to ``dtype``; the model itself is untouched.
    The data are processed in chunks of at most ``max_rows`` examples.
    """
    from .models import MLP

    if isinstance(model, MLP):
        return mlp_hessian(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)
    return generic_hessian(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)


def mlp_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    band: int | None = None,
    max_rows: int = 4096,
    max_elements: int = 2**24,
) -> torch.Tensor:
    """The dense Hessian of an MLP, exact, or with only the blocks between layers at most ``band`` apart
    (the layer-ordered approximation; band 0 keeps the diagonal blocks). See :func:`mlp_hessian_blocks`."""
    blocks = mlp_hessian_blocks(
        model, loss_fn, x, y, dtype=dtype, band=band, max_rows=max_rows, max_elements=max_elements
    )
    sizes = [blocks[j, j].shape[0] for j in range(layer_count(model))]
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    h = torch.zeros(sum(sizes), sum(sizes), dtype=dtype, device=blocks[0, 0].device)
    for (j, m), block in blocks.items():
        h[starts[j] : starts[j] + sizes[j], starts[m] : starts[m] + sizes[m]] = block
        if j != m:
            h[starts[m] : starts[m] + sizes[m], starts[j] : starts[j] + sizes[j]] = block.T
    return h


def layer_count(model: nn.Module) -> int:
    """Number of ``nn.Linear`` layers of an MLP: the blocks of the layer-ordered Hessian."""
    return sum(isinstance(mod, nn.Linear) for mod in model.modules())


def mlp_hessian_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    band: int | None = None,
    max_rows: int = 4096,
    max_elements: int = 2**24,
) -> dict[tuple[int, int], torch.Tensor]:
    """The blocks H[j, m] (j >= m, j - m <= band) of the exact Hessian of an MLP (alternating
    ``nn.Linear`` and elementwise activations), using its layer structure (see the module docstring).

    Returns a dict from (j, m) to the block of shape (P_j, P_m), each layer's parameters in
    ``parameters()`` order (weight row-major, then bias). ``band=None`` returns every block.
    ``max_elements`` bounds the largest temporary.
    """
    net = _copy_for_curvature(model, dtype)
    linears = [mod for mod in net if isinstance(mod, nn.Linear)]
    acts = [mod for mod in net if not isinstance(mod, nn.Linear)]
    weights = [lin.weight.detach() for lin in linears]
    biases = [None if lin.bias is None else lin.bias.detach() for lin in linears]
    n_layers, bias = len(linears), linears[0].bias is not None
    band = n_layers - 1 if band is None else min(int(band), n_layers - 1)
    device = weights[0].device
    # Blocks are built in the "augmented" order, each layer's weight and bias as one (out, in + 1) matrix,
    # row-major, so that each unit's columns are contiguous; permuted to parameters() order at the end.
    sizes = [w.shape[0] * (w.shape[1] + bias) for w in weights]
    blocks = {
        (j, m): torch.zeros(sizes[j], sizes[m], dtype=dtype, device=device)
        for m in range(n_layers)
        for j in range(m, min(n_layers, m + band + 1))
    }
    x = x.to(device=device, dtype=dtype).flatten(1)
    y = y.to(device)
    n = len(y)

    def augment(a: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([a, torch.full_like(a[..., :1], value)], dim=-1) if bias else a

    for start in range(0, n, max_rows):
        xb, yb = x[start : start + max_rows], y[start : start + max_rows]
        weight = len(yb) / n  # the chunk's share of the mean loss
        with torch.no_grad():  # inputs a_l of every linear layer, and pre-activations z_l
            inputs, zs = [xb], []
            for j in range(n_layers):
                zs.append(nn.functional.linear(inputs[-1], weights[j], biases[j]))
                if j < n_layers - 1:
                    inputs.append(acts[j](zs[-1]))

        for m in range(n_layers):

            def above(z_m: torch.Tensor, m=m, yb=yb, weight=weight):
                """(delta_m..delta_L-1, inputs of layers m+1..L-1) as functions of z_m."""
                z, zs_up, ins = z_m, [z_m], []
                for j in range(m + 1, n_layers):
                    a = acts[j - 1](z)
                    ins.append(a)
                    z = nn.functional.linear(a, weights[j], biases[j])
                    zs_up.append(z)
                deltas = [grad(lambda out: loss_fn(out, yb) * weight)(z)]
                for j in range(n_layers - 1, m, -1):
                    z_prev = zs_up[j - 1 - m]
                    slope = grad(lambda u, act=acts[j - 1]: act(u).sum())(z_prev)  # sigma'(z), elementwise
                    deltas.insert(0, (deltas[0] @ weights[j]) * slope)
                return tuple(deltas), tuple(ins)

            width_m = weights[m].shape[0]
            a_m = augment(inputs[m], 1.0)  # (n_b, in_m + bias)
            deltas, ins = above(zs[m])

            def pushforward(t: torch.Tensor, z_m=zs[m], above=above):
                return torch.func.jvp(above, (z_m,), (t,))[1]

            top = min(n_layers, m + band + 1)
            largest = len(yb) * max(sizes[m:top])
            units = max(1, min(width_m, max_elements // largest))
            for p0 in range(0, width_m, units):
                p1 = min(width_m, p0 + units)
                tangent = torch.zeros(p1 - p0, *zs[m].shape, dtype=dtype, device=device)
                tangent[torch.arange(p1 - p0), :, torch.arange(p0, p1)] = 1.0  # unit p of z_m, every example
                d_deltas, d_ins = torch.func.vmap(pushforward)(tangent)
                cols = slice(p0 * a_m.shape[1], p1 * a_m.shape[1])
                for j in range(m, top):
                    a_prev = augment(inputs[j], 1.0)
                    g = d_deltas[j - m][:, :, :, None] * a_prev[None, :, None, :]
                    if j > m:
                        g = g + deltas[j - m][None, :, :, None] * augment(d_ins[j - m - 1], 0.0)[:, :, None, :]
                    blocks[j, m][:, cols] += torch.einsum("pirs,iq->rspq", g, a_m).reshape(sizes[j], -1)

    order = []  # parameters() position, within its layer, of each augmented entry
    for w in weights:
        out_f, in_f = w.shape
        r, s = torch.meshgrid(torch.arange(out_f), torch.arange(in_f + bias), indexing="ij")
        real = torch.where(s < in_f, r * in_f + s, out_f * in_f + r).reshape(-1)
        order.append(torch.argsort(real).to(device))
    return {(j, m): b[order[j]][:, order[m]] for (j, m), b in blocks.items()}


def generic_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    block: int = 64,
    max_rows: int = 4096,
) -> torch.Tensor:
    """The exact Hessian of any model by Hessian-vector products with the unit vectors.

    ``block`` unit vectors are processed at once, through :func:`hvp_operator`.
    """
    matvec, n_params = hvp_operator(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)
    device = next(model.parameters()).device
    h = torch.zeros(n_params, n_params, dtype=dtype, device=device)
    for j in range(0, n_params, block):
        m = min(block, n_params - j)
        unit = torch.zeros(m, n_params, dtype=dtype, device=device)
        unit[torch.arange(m), torch.arange(j, j + m)] = 1.0
        h[j : j + m] = matvec(unit)
    # Symmetric up to rounding; symmetrise so that eigensolvers see an exactly symmetric matrix.
    return 0.5 * (h + h.T)


def hvp_operator(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *, dtype=torch.float64, max_rows=4096
) -> tuple[MatVec, int]:
    """(matvec, P): batched Hessian-vector products of the mean loss over (x, y), by reverse-over-reverse
    differentiation; the gradient's graph of each data chunk is recorded once and reused by every call."""
    net = _copy_for_curvature(model, dtype)
    names = [k for k, p in net.named_parameters() if p.requires_grad]
    params = [p for p in net.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    x, y, n = x.to(device=theta.device, dtype=dtype), y.to(theta.device), len(y)

    def unflatten(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.view(s) for k, v, s in zip(names, t.split(sizes), shapes, strict=True)}

    pullbacks = []
    for start in range(0, n, max_rows):
        xb, yb = x[start : start + max_rows], y[start : start + max_rows]

        weight = len(yb) / n  # the chunk's share of the mean loss

        def chunk_loss(t, xb=xb, yb=yb, weight=weight):
            return loss_fn(functional_call(net, unflatten(t), (xb,)), yb) * weight

        pullbacks.append(vjp(grad(chunk_loss), theta)[1])
    batched = [vmap(pb) for pb in pullbacks]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        v = v.to(dtype)
        if len(v) == 1:  # a single vector (Lanczos) skips vmap's overhead, about 15 % of the product
            return sum(pb(v[0])[0] for pb in pullbacks)[None]
        return sum(pb(v)[0] for pb in batched)

    return matvec, theta.numel()


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

    All eigenvalues come from ``torch.linalg.eigvalsh``. On the CPU the top eigenvectors come from
    ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``, to machine precision, fixed start vector) on the
    dense matrix, which costs a fraction of the eigenvalues, where a full ``eigh`` computing every
    eigenvector costs several times more (benchmarks/exact_hessian.py). Small matrices, CUDA, and the
    rare case where Lanczos does not converge use ``torch.linalg.eigh``. Each eigenvector's sign is fixed
    so that its largest-magnitude entry is positive.
    """
    p = h.shape[0]
    k = min(int(topk_vectors), p)
    if k == 0:
        return Spectrum(torch.linalg.eigvalsh(h).flip(0).double().cpu().numpy(), np.zeros((p, 0)))
    if h.device.type == "cpu" and p > 4 * k + 64:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        vals = torch.linalg.eigvalsh(h).flip(0).double().numpy()
        start = np.random.default_rng(0).standard_normal(p)
        try:
            _, vecs = eigsh(h.numpy(), k=k, which="LA", tol=0.0, v0=start.astype(h.numpy().dtype))
            return Spectrum(vals, _canonical_signs(vecs[:, ::-1].astype(np.float64)))
        except ArpackNoConvergence:
            pass
    w, v = torch.linalg.eigh(h)
    vecs = v[:, -k:].flip(1).double().cpu().numpy()
    return Spectrum(w.flip(0).double().cpu().numpy(), _canonical_signs(vecs))


def _canonical_signs(vecs: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive (eigenvectors are defined up to sign)."""
    rows = np.abs(vecs).argmax(axis=0)
    return vecs * np.sign(vecs[rows, np.arange(vecs.shape[1])])
