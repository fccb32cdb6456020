"""Curvature: the exact Hessian of the mean training loss and its spectrum.

Three ways to build the exact Hessian, each tested against a dense torch.func reference:

* ``layer_hessian`` for :class:`sane_cli.models.MLP` (``mlp_build``) exploits the layer structure.
  The gradient of layer l's weights is a sum over examples of outer products, g_l = sum_i delta_l,i (x)
  a~_l-1,i (the back-propagated error times the layer's input, with a 1 appended for the bias). Layer m's weights
  enter the loss only through its pre-activations z_m, so the rows of H for layer m against every
  layer l >= m follow from the derivatives of (delta_l, a~_l-1) along the w_m unit directions of z_m,
  forward-mode through the layers above m, one pass per *unit* rather than per parameter:

      H[l (r,s), m (p,q)] = sum_i (d_p delta_l,i[r] a~_l-1,i[s] + delta_l,i[r] d_p a~_l-1,i[s]) a~_m-1,i[q]

  The sum over examples is one matrix product per block; the blocks below the diagonal follow by symmetry.
* ``layer_hessian`` for :class:`sane_cli.models.CNN`: the same structure for convolutions, whose weights are
  shared across positions (sane_cli.conv_hessian).
* ``generic_hessian``, for any model: Hessian-vector products with the unit vectors by reverse-over-reverse
  differentiation, a block of unit vectors at a time.

Parameters are ordered as ``model.parameters()`` yields them, which for the MLP and the CNN is layer by layer,
input to output (weight row-major, then bias).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import grad

from . import distributed
from .losses import LossFn
from .models import activation_derivatives, is_layered

MatVec = Callable[[torch.Tensor], torch.Tensor]

# torch's forward-mode AD loads its decompositions through torch.jit.script on first use, which warns
# about torch.jit's deprecation on every run; the warning is torch's own business, not the user's.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


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
    The data are processed in chunks of at most ``max_rows`` examples. A layered model (the MLP, the CNN) is
    built from its layer structure (:func:`layer_hessian`), any other from Hessian-vector products.
    """
    if is_layered(model):
        return layer_hessian(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)
    return generic_hessian(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)


def layer_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    band: int | None = None,
    max_rows: int = 4096,
    max_elements: int = 2**25,  # 256 MiB in float64
) -> torch.Tensor:
    """The dense Hessian of a layered model, exact, or with only the blocks between layers at most ``band``
    apart (the layer-ordered approximation; band 0 keeps the diagonal blocks). See :func:`layer_hessian_blocks`."""
    starts = np.cumsum([0, *layer_sizes(model)]).tolist()
    h = torch.zeros(starts[-1], starts[-1], dtype=dtype, device=next(model.parameters()).device)
    pairs = _pairs(len(starts) - 1, band)
    _build(model)(lambda j, m: (h, starts[j], starts[m]), model, loss_fn, x, y, dtype, pairs, max_rows, max_elements)
    distributed.current().pool(h, len(y))  # a data-parallel job: the mean over every rank's examples
    for j, m in pairs:  # the blocks above the diagonal by symmetry
        if j > m:
            h[starts[m] : starts[m + 1], starts[j] : starts[j + 1]] = h[
                starts[j] : starts[j + 1], starts[m] : starts[m + 1]
            ].T
    return h


def layer_count(model: nn.Module) -> int:
    """Number of layers (linear or convolutional) of a layered model: the blocks of the layer-ordered Hessian."""
    return len(layer_sizes(model))


def layer_hessian_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    band: int | None = None,
    max_rows: int = 4096,
    max_elements: int = 2**25,  # 256 MiB in float64
) -> dict[tuple[int, int], torch.Tensor]:
    """The blocks H[j, m] (j >= m, j - m <= band) of the exact Hessian of a layered model (an MLP: alternating
    ``nn.Linear`` and elementwise activations; a CNN: convolutions, activations and pooling, then a linear
    layer), using its layer structure (see the module docstring and sane_cli.conv_hessian).

    Returns a dict from (j, m) to the block of shape (P_j, P_m), each layer's parameters in
    ``parameters()`` order (weight row-major, then bias). ``band=None`` returns every block.
    The examples are taken ``max_rows`` at most at a time, and ``max_elements`` bounds the largest temporary.
    """
    sizes = layer_sizes(model)
    device = next(model.parameters()).device
    pairs = _pairs(len(sizes), band)
    blocks = {(j, m): torch.zeros(sizes[j], sizes[m], dtype=dtype, device=device) for j, m in pairs}
    _build(model)(lambda j, m: (blocks[j, m], 0, 0), model, loss_fn, x, y, dtype, pairs, max_rows, max_elements)
    world = distributed.current()
    if world.size > 1:  # a data-parallel job: the mean over every rank's examples, the blocks in one message
        flat = world.pool(torch.cat([b.reshape(-1) for b in blocks.values()]), len(y))
        for b, t in zip(blocks.values(), flat.split([b.numel() for b in blocks.values()]), strict=True):
            b.copy_(t.view_as(b))
    return blocks


def layer_sizes(model: nn.Module) -> list[int]:
    """Parameters of each layer, input to output (:func:`parameter_groups`; for the MLP and the CNN their
    linear and convolutional layers): the blocks of the layer order."""
    return [size for *_, size in parameter_groups(model)]


def parameter_groups(model: nn.Module) -> list[tuple[str, str, int]]:
    """The layers of any model for per-layer curvature: (module name, module type, trainable parameters) of
    each module that holds trainable parameters of its own, in ``model.parameters()`` order, so that the
    groups split the parameter vector into consecutive ranges (the diagonal blocks of the Hessian). For the
    MLP and the CNN these are their linear and convolutional layers, the blocks of the layer order."""
    groups, seen = [], set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            groups.append((name or "(model)", type(module).__name__, sum(p.numel() for p in own)))
    return groups


def _build(model: nn.Module):
    """The layer-structured build for the model, from its registry entry (sane_cli.models.MODELS)."""
    from .models import spec_of

    build = spec_of(model).hessian_build
    if build is None:
        raise ValueError(f"{type(model).__name__} has no layer-structured Hessian build; use hessian() instead")
    return build


def cnn_build(target, model, loss_fn, x, y, dtype, pairs, max_rows, max_elements) -> None:
    """sane_cli.conv_hessian.cnn_hessian_into on a copy of the CNN in ``dtype``."""
    from .conv_hessian import cnn_hessian_into

    net = _copy_for_curvature(model, dtype)
    device = next(net.parameters()).device
    x, y = x.to(device=device, dtype=dtype).flatten(1), y.to(device)
    # its batches of directions run fastest when each stays within about 64 MiB (measured: 2^23 elements and
    # 1,024 examples at a time build the default CNN's Hessian in 7.4 s on one core, 2^25 and 4,096 in 17.7 s)
    rows, elements = min(max_rows, 1024), min(max_elements, 2**23)
    cnn_hessian_into(target, net, tuple(net[0].unflattened_size), pairs, loss_fn, x, y, rows, elements)


def _pairs(n_layers: int, band: int | None) -> list[tuple[int, int]]:
    """The blocks (j, m), j >= m, kept by ``band`` (None: all)."""
    band = n_layers - 1 if band is None else min(int(band), n_layers - 1)
    return [(j, m) for m in range(n_layers) for j in range(m, min(n_layers, m + band + 1))]


def mlp_build(
    target: Callable[[int, int], tuple[torch.Tensor, int, int]],
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
    pairs: list[tuple[int, int]],
    max_rows: int,
    max_elements: int,
) -> None:
    """Add the blocks (j, m) in ``pairs`` of an MLP's Hessian into ``target(j, m) = (tensor, row of layer j's
    first parameter, column of layer m's first parameter)``, in parameters() order.

    In the module docstring's formula, D_i = d delta_j,i / d z_m,i and E_i = d a~_j-1,i / d z_m,i give

        H[j (r,s), m (p,q)] = sum_i D_i[r,p] (a~_j-1,i[s] a~_m-1,i[q])  +  sum_i (delta_j,i[r] a~_m-1,i[q]) E_i[s,p]

    Grouped this way each term is the product of an (n, ~P_j) and an (n, ~P_m) matrix, which runs at the
    speed of a square matrix product (about n P_j P_m multiply-adds each). The second term vanishes on the
    diagonal and is sparse next to it (E_i = diag(sigma'(z_m)) for j = m + 1). D and E come from the
    directional derivatives along the unit directions e_p of z_m, written out for elementwise activations:

        forward   dz_m+1 = sigma'(z_m)[p] W_m+1[:, p],  da_l = sigma'(z_l) dz_l,  dz_l+1 = W_l+1 da_l
        backward  d delta_L-1 = loss''(z_L-1) dz_L-1,
                  d delta_l = sigma'(z_l) (W_l+1^T d delta_l+1) + sigma''(z_l) (W_l+1^T delta_l+1) dz_l
    """
    net = _copy_for_curvature(model, dtype)
    linears = [mod for mod in net if isinstance(mod, nn.Linear)]
    acts = [mod for mod in net if not isinstance(mod, nn.Linear)]
    weights = [lin.weight.detach() for lin in linears]
    biases = [None if lin.bias is None else lin.bias.detach() for lin in linears]
    n_layers, bias = len(linears), linears[0].bias is not None
    band = max(j - m for j, m in pairs)  # the blocks kept are those at most this far from the diagonal
    device = weights[0].device
    outs, ins = [w.shape[0] for w in weights], [w.shape[1] for w in weights]
    augs = [i + bias for i in ins]  # a layer's input with a 1 appended for the bias
    x = x.to(device=device, dtype=dtype).flatten(1)
    y = y.to(device)
    n = len(y)
    # per example: the products a~_j-1 a~_m-1^T and delta_j a~_m-1^T, and one unit's tangents
    per_example = max(max(augs[j] * augs[m] + outs[j] * augs[m] for j, m in pairs), sum(outs) + 2 * max(outs))
    rows = max(1, min(max_rows, max_elements // per_example))

    def augment(a: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if bias else a

    def add(j: int, m: int, p0: int, p1: int, piece: torch.Tensor, diagonal: bool = False) -> None:
        """Add ``piece`` (out_j, s, units p0:p1, in_m + bias) of block (j, m), in the layout where each layer's
        weight and bias form one (out, in + bias) matrix, to the target in parameters() order. With
        ``diagonal``, piece is (out_j, units, in_m + bias) and lands at s = p (the weight rows only)."""
        t, a, b = target(j, m)
        wj, wm, u = outs[j] * ins[j], outs[m] * ins[m], p1 - p0
        row_parts = [(slice(a, a + wj), ins[j], slice(0, ins[j]))]
        if bias and not diagonal and piece.shape[1] > ins[j]:
            row_parts.append((slice(a + wj, a + wj + outs[j]), 1, slice(ins[j], ins[j] + 1)))
        col_parts = [(slice(b + p0 * ins[m], b + p1 * ins[m]), ins[m], slice(0, ins[m]))]
        if bias:
            col_parts.append((slice(b + wm + p0, b + wm + p1), 1, slice(ins[m], ins[m] + 1)))
        for rs, rw, rsel in row_parts:
            for cs, cw, csel in col_parts:
                view = t[rs, cs].view(outs[j], rw, u, cw)
                if diagonal:
                    view[:, p0:p1].diagonal(dim1=1, dim2=2).add_(piece[:, :, csel].transpose(1, 2))
                else:
                    view.add_(piece[:, rsel, :, csel])

    for start in range(0, n, rows):
        xb, yb = x[start : start + rows], y[start : start + rows]
        weight = len(yb) / n  # the chunk's share of the mean loss
        with torch.no_grad():  # inputs a_l of every linear layer, and pre-activations z_l
            inputs, zs = [xb], []
            for j in range(n_layers):
                zs.append(nn.functional.linear(inputs[-1], weights[j], biases[j]))
                if j < n_layers - 1:
                    inputs.append(acts[j](zs[-1]))
        inputs = [augment(a) for a in inputs]  # a~_l: (n_b, in_l + bias)
        derivatives = [activation_derivatives(act, z) for act, z in zip(acts, zs, strict=False)]
        slope = [d1 for d1, _ in derivatives]  # sigma'(z_l), elementwise
        bend = [d2 for _, d2 in derivatives]  # sigma''(z_l)
        loss_grad = grad(lambda out, yb=yb, weight=weight: loss_fn(out, yb) * weight)
        deltas = [loss_grad(zs[-1])]  # delta_l = d loss / d z_l, (n_b, out_l), from the top down
        curve = []  # sigma''(z_l) (W_l+1^T delta_l+1): the part of d delta_l that moves with dz_l
        for k in range(n_layers - 2, -1, -1):
            back = deltas[0] @ weights[k + 1]
            deltas.insert(0, back * slope[k])
            curve.insert(0, back * bend[k])

        def loss_hvp(t: torch.Tensor, z=zs[-1], loss_grad=loss_grad) -> torch.Tensor:
            """loss''(z_L-1) t for tangents t (units, n_b, out_L-1)."""
            return torch.func.vmap(lambda v: torch.func.jvp(loss_grad, (z,), (v,))[1])(t)

        for m in range(n_layers):
            top = min(n_layers, m + band + 1)
            per_unit = len(yb) * (sum(outs[m:]) + 2 * max(outs))  # the tangents kept for one unit
            units = max(1, min(outs[m], max_elements // per_unit))
            for p0 in range(0, outs[m], units):
                p1 = min(outs[m], p0 + units)
                u, idx = p1 - p0, torch.arange(p0, p1, device=device)
                each = torch.arange(u, device=device)  # one tangent per unit
                dz = {}  # forward tangents dz_l; sigma'(z_l) dz_l is that of layer l+1's input
                if m < n_layers - 1:
                    dz[m + 1] = slope[m][:, p0:p1].T[:, :, None] * weights[m + 1][:, p0:p1].T[:, None, :]
                    for k in range(m + 1, n_layers - 1):
                        dz[k + 1] = (slope[k] * dz[k]) @ weights[k + 1].T
                    d_delta = loss_hvp(dz[n_layers - 1])
                else:
                    unit = torch.zeros(u, *zs[m].shape, dtype=dtype, device=device)
                    unit[each, :, idx] = 1.0  # unit p of z_m, every example
                    d_delta = loss_hvp(unit)
                for j in range(n_layers - 1, m - 1, -1):  # d delta_j, (units, n_b, out_j), from the top down
                    if j < n_layers - 1:
                        d_delta = (d_delta @ weights[j + 1]) * slope[j]
                        if j > m:
                            d_delta += curve[j] * dz[j]
                        else:  # dz_m = e_p
                            d_delta[each, :, idx] += curve[m][:, p0:p1].T
                    if j >= top:
                        continue
                    outer = inputs[j][:, :, None] * inputs[m][:, None, :]  # (n_b, in_j + bias, in_m + bias)
                    add(j, m, p0, p1, torch.einsum("uir,isq->rsuq", d_delta, outer))
                    if j == m + 1:  # E_i[s, p] = sigma'(z_m,i)[p] [s = p]
                        scaled = slope[m][:, p0:p1, None] * inputs[m][:, None, :]  # (n_b, units, in_m + bias)
                        add(j, m, p0, p1, torch.einsum("ir,iuq->ruq", deltas[j], scaled), diagonal=True)
                    elif j > m + 1:
                        err = deltas[j][:, :, None] * inputs[m][:, None, :]  # (n_b, out_j, in_m + bias)
                        add(j, m, p0, p1, torch.einsum("irq,uis->rsuq", err, slope[j - 1] * dz[j - 1]))


def generic_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    block: int = 8,
    max_rows: int = 4096,
) -> torch.Tensor:
    """The exact Hessian of any model by Hessian-vector products with the unit vectors.

    ``block`` unit vectors are passed at once to :func:`hvp_operator`, which vectorises them where that pays.
    """
    matvec, n_params = hvp_operator(model, loss_fn, x, y, dtype=dtype, max_rows=max_rows)
    return dense_operator(matvec, n_params, dtype=dtype, device=next(model.parameters()).device, block=block)


def dense_operator(matvec: MatVec, p: int, *, dtype: torch.dtype, device, block: int = 8) -> torch.Tensor:
    """The (P, P) matrix of a symmetric operator, from its products with the unit vectors, ``block`` at a time,
    symmetrised (it is symmetric up to rounding; eigensolvers then see an exactly symmetric matrix)."""
    h = torch.zeros(p, p, dtype=dtype, device=device)
    for j in range(0, p, block):
        m = min(block, p - j)
        unit = torch.zeros(m, p, dtype=dtype, device=device)
        unit[torch.arange(m), torch.arange(j, j + m)] = 1.0
        h[j : j + m] = matvec(unit)
    return 0.5 * (h + h.T)


def hvp_operator(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype=torch.float64,
    max_rows: int = 4096,
    chunk_bytes: int = 2**31,
    keep_bytes: int | None = None,
) -> tuple[MatVec, int]:
    """(matvec, P): Hessian-vector products of the mean loss over (x, y), by reverse-over-reverse
    differentiation, the data taken ``max_rows`` examples at a time, or fewer where one chunk's recorded graph
    would exceed ``chunk_bytes`` (2 GiB; a ResNet-20 on CIFAR-10 images: 157); ``matvec`` takes a batch of
    vectors (B, P).

    The gradient's graph of a chunk is recorded once (``create_graph``) and each product is one backward pass
    through it (``retain_graph``), while the graphs kept stay within ``keep_bytes`` (None: a quarter of the
    device's free memory, at least one chunk; estimated from the model's activations); the chunks beyond are
    recorded afresh at each product and dropped, so memory stays bounded however many examples there are (each
    product then also pays one gradient per such chunk). A kept and a recorded-afresh chunk give the same
    products to the bit, so the memory free changes the speed, never the numbers.

    A batch of vectors goes through in one vectorised backward pass only where that pays: a product of little
    work (no convolution, fewer than 3e7 multiply-adds over the examples), where the fixed cost of a pass
    dominates; otherwise one vector at a time (vectorised convolutions and large products run slower per vector
    than single ones: ``benchmarks/hvp.py``).

    In a data-parallel job (sane_cli.distributed) (x, y) is this rank's shard and each product is summed over
    the ranks, weighted by their shares: the products of the mean loss over every rank's examples."""
    net = _copy_for_curvature(model, dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    p_total = sum(sizes)
    x, y, n = x.to(device=params[0].device, dtype=dtype), y.to(params[0].device), len(y)

    from .costs import profile_example

    try:
        prof = profile_example(net, x[:1])
        # the recorded second-order graph of one example: about 6 x the outputs of every leaf module and the input
        # (measured: 5-9 x for MLPs)
        graph = 6 * (prof.outputs + x[0].numel()) * x.element_size()
        macs, conv = prof.linear_macs + prof.conv_macs, any(prof.conv)
    except RuntimeError:  # a TorchScript module takes no hooks: chunks of max_rows, one vector at a time
        graph, macs, conv = 0, 0, True
    rows = max(1, min(max_rows, chunk_bytes // max(1, graph)))  # a chunk's graph within chunk_bytes
    if keep_bytes is None:
        from .budget import free_memory

        keep_bytes = free_memory(params[0].device) // 4

    def gradient(start: int) -> tuple[torch.Tensor, ...]:
        """The chunk's share of the mean loss's gradient, its graph recorded."""
        xb, yb = x[start : start + rows], y[start : start + rows]
        with torch.enable_grad():
            return torch.autograd.grad(loss_fn(net(xb), yb) * (len(yb) / n), params, create_graph=True)

    def pull(grads, v: torch.Tensor, retain: bool) -> torch.Tensor:
        """(B, P) products of the chunk's Hessian with the rows of ``v``."""
        batched = len(v) > 1
        parts = [t.reshape(len(v), *s) if batched else t.reshape(s) for t, s in zip(v.split(sizes, 1), shapes,
                                                                                      strict=True)]  # fmt: skip
        out = torch.autograd.grad(grads, params, grad_outputs=parts, retain_graph=retain, is_grads_batched=batched)
        return torch.cat([h.reshape(len(v), -1) for h in out], 1)

    starts = list(range(0, n, rows))
    keep = max(1, min(len(starts), keep_bytes // max(1, graph * rows)))
    kept = [gradient(start) for start in starts[:keep]]
    vectorise = vectorises(n, macs, conv)
    world = distributed.current()
    share = world.share(n)  # a data-parallel job: this rank's share of the examples, its products summed

    def product(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for i, start in enumerate(starts):
            out += pull(kept[i], v, retain=True) if i < keep else pull(gradient(start), v, retain=False)
        return out

    def matvec(v: torch.Tensor) -> torch.Tensor:
        v = v.to(dtype).reshape(-1, p_total)
        if vectorise or len(v) == 1:
            out = product(v)
        else:
            out = torch.cat([product(row[None]) for row in v])
        return out if world.size == 1 else world.sum(out.mul_(share))

    return matvec, p_total


VECTORISE_MACS = 3e7  # below this many multiply-adds over the examples a product's fixed cost dominates


def vectorises(n: int, macs: int, conv: bool) -> bool:
    """Whether :func:`hvp_operator` takes several vectors in one vectorised pass (else one at a time): for a
    product of little work, ``n`` examples of ``macs`` multiply-adds each, without convolutions."""
    return not conv and n * macs < VECTORISE_MACS


def _copy_for_curvature(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy
    import warnings

    with warnings.catch_warnings():  # a TorchScript module's .to() reads each parameter's .grad, and warns
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
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
