"""The exact Hessian of a convolutional net (:class:`sane_cli.models.CNN`) from its layer structure.

A convolution is a linear map of its unfolded input patches, the same weights at every position: with the
layer's input unfolded to U (n, C_in K + 1, L) (every patch of K positions of the C_in channels as a column, a
1 appended for the bias, L output positions) and its weights and bias as one matrix W~ (C_out, C_in K + 1),
its pre-activations are z = W~ U (n, C_out, L). The final linear layer is the case L = 1. The gradient of
layer j's weights is sum_i sum_a delta_j,i[:, a] (x) U_j,i[:, a] (delta_j = dLoss/dz_j), so the rows of H for a
parameter (p, q) of layer m follow from the derivatives of (delta_j, U_j), j >= m, along the direction it
moves z_m in, dz_m[p', b] = [p' = p] U_m[q, b] (the same weight at every position b):

    H[j (r,s), m (p,q)] = sum_i sum_a (d delta_j,i[r, a] U_j,i[s, a] + delta_j,i[r, a] d U_j,i[s, a])

Each direction is carried forward through the layers above m (convolutions as matrix products of unfolded
tangents, the activation's first derivative, max pooling as the selection it makes at the point, average
pooling as the linear map it is) to the logits, through the loss's Hessian in the logits, and back down to
layer m (the transposed convolutions, the pooling's transpose, and the activation's second derivative times
the back-propagated gradient where the tangent moves z). A block of directions is one batch, and each sum over
examples and positions is one matrix product: the cost is about (P directions) x (a forward and backward pass
above the layer) plus the products, all in matrix form.

For piecewise-linear activations (relu, linear; max and average pooling are piecewise linear too) the
activations' second derivatives vanish, and H = sum_i J_i^T H_i J_i (the Gauss-Newton part: J_i the Jacobian of
example i's logits in the weights, H_i the loss's Hessian in the logits) + the terms delta_j x dU_j between
different layers. The first is a Gram matrix of the Jacobians scaled by H_i's square root, rank(H_i) rows per
example (:func:`_gauss_newton_into`; for the final linear layer, whose Jacobian is I (x) a~_i, in that Kronecker
form, without the factor of the classes); those of adjacent layers are taken for all of a layer's directions at
once (:func:`_adjacent_into`), as are those between the linear layer and the convolution two below it
(:func:`_top_from_two_below_into`), and only the other layers two or more apart need each direction carried
forward, with no backward pass (:func:`_directions`), its first step through the one channel the direction
moves (:func:`_one_channel_step`).

The cost of the Gauss-Newton part bounds the build: about rank(H_i) n P_conv^2 / 2 multiply-adds (P_conv the
convolutions' parameters; 9 n P_conv^2 / 2 for cross-entropy over 10 classes). An MLP's Jacobian is one
Kronecker product per example (the back-propagated errors (x) the layer's input), so its Gauss-Newton blocks
cost n P_j P_m with no factor of the classes; a convolution's is a sum of one such product per position, and
neither the sum over positions (L^2 Kronecker products) nor the dense form escapes that factor.

Parameters are in ``model.parameters()`` order: layer by layer, input to output, each layer's weight
(row-major: output channel, input channel, kernel offsets) then its bias.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad

from .losses import LossFn
from .models import activation_derivatives


@dataclass
class _Layer:
    """One layer of the net as the build sees it: its weight matrix W~ (out, in' = C_in K [+ 1]), how its input
    is unfolded, and what follows it (activation, pooling)."""

    weight: torch.Tensor  # (out, C_in K): the weights without the bias column
    bias: torch.Tensor | None  # (out,)
    conv: nn.Module | None  # the nn.Conv1d / nn.Conv2d, None for the final linear layer
    act: nn.Module | None  # the activation after it (None for the final layer)
    pool: str | None  # "max", "avg" or None after the activation
    dims: int  # spatial dimensions (1, 2; 0 for the linear layer)

    @property
    def out(self) -> int:
        return self.weight.shape[0]

    @property
    def width(self) -> int:
        """in': the columns of W~, the bias's included."""
        return self.weight.shape[1] + (self.bias is not None)


def layers_of(net: nn.Sequential) -> list[_Layer]:
    """The convolutional and linear layers of a :class:`sane_cli.models.CNN`, input to output, with the
    activation and pooling after each."""
    layers: list[_Layer] = []
    for mod in net:
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
            conv = None if isinstance(mod, nn.Linear) else mod
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            b = None if mod.bias is None else mod.bias.detach()
            layers.append(_Layer(w, b, conv, None, None, 0 if conv is None else mod.weight.dim() - 2))
        elif isinstance(mod, nn.MaxPool1d | nn.MaxPool2d):
            layers[-1].pool = "max"
        elif isinstance(mod, nn.AvgPool1d | nn.AvgPool2d):
            layers[-1].pool = "avg"
        elif isinstance(mod, nn.Unflatten | nn.Flatten):
            continue
        elif layers:
            layers[-1].act = mod
    return layers


def _unfold(layer: _Layer, a: torch.Tensor) -> torch.Tensor:
    """The layer's input a (N, C, *S) as patch rows (N, L, C K), each patch channel-major then kernel offset, as
    the weight (out, C, *K) is laid out; for the linear layer the flattened input (N, 1, D)."""
    if layer.conv is None:
        return a.reshape(a.shape[0], 1, -1)
    k, pad = layer.conv.kernel_size, layer.conv.padding
    if layer.dims == 2:  # windows as a view, copied once (F.unfold writes (N, C K, L), then a transposed copy:
        padded = nn.functional.pad(a, (pad[1], pad[1], pad[0], pad[0]))  # 1.6-2.1x slower on MNIST's shapes)
        patches = padded.unfold(2, k[0], 1).unfold(3, k[1], 1)  # (N, C, H, W, Kh, Kw)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(a.shape[0], -1, a.shape[1] * k[0] * k[1])
    patches = nn.functional.pad(a, (pad[0], pad[0])).unfold(2, k[0], 1)  # (N, C, L, K)
    return patches.transpose(1, 2).reshape(a.shape[0], patches.shape[2], -1)


def _transpose(layer: _Layer, g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The transpose of the layer's map from its input (N, *shape) to z: g (N, out, L) -> (N, *shape): W~^T g on
    the patches, then each patch added back where it came from (col2im; one matrix product and a fold, where
    torch's float64 transposed convolution loops over the batch)."""
    if layer.conv is None:
        return (g[..., 0] @ layer.weight).reshape(g.shape[0], *shape)
    k, pad, spatial = layer.conv.kernel_size, layer.conv.padding, shape[1:]
    cols = g.transpose(1, 2) @ layer.weight  # (N, L, C K): one matrix product
    cols = cols.reshape(g.shape[0], *spatial, shape[0], *k)
    cols = cols.permute(0, layer.dims + 1, *range(layer.dims + 2, 2 * layer.dims + 2), *range(1, layer.dims + 1))
    out = cols.new_zeros(g.shape[0], shape[0], *[s + 2 * p for s, p in zip(spatial, pad, strict=True)])
    for offset in _offsets(layer):  # each kernel offset's patches, shifted back
        where = (..., *[slice(o, o + s) for o, s in zip(offset, spatial, strict=True)])
        out[where] += cols[(slice(None), slice(None), *offset)]
    return out[(..., *[slice(p, p + s) for p, s in zip(pad, spatial, strict=True)])]


class _Forward:
    """One chunk of examples through the net: each layer's unfolded input U (as rows: n, L, in'), pre-activations z
    (n, out, L), the activation's first and second derivatives there, max pooling's selections, and the
    shapes on the way; then the back-propagated deltas and the curvature terms of the activations."""

    def __init__(self, layers: list[_Layer], x: torch.Tensor, in_shape: tuple[int, ...]):
        self.layers = layers
        self.inputs, self.zs, self.slopes, self.bends, self.picks = [], [], [], [], []
        self.in_shapes, self.out_shapes = [], []  # (C, *S) of each layer's input and of its activation
        self._errors, self._windows = {}, {}
        a = x.reshape(len(x), *in_shape)
        with torch.no_grad():
            for layer in layers:
                self.in_shapes.append(tuple(a.shape[1:]))
                u = _unfold(layer, a)
                if layer.bias is not None:
                    u = torch.cat([u, torch.ones_like(u[..., :1])], dim=2)
                self.inputs.append(u)  # (n, L, in')
                full = torch.cat([layer.weight, layer.bias[:, None]], 1) if layer.bias is not None else layer.weight
                z = (u @ full.T).transpose(1, 2)  # (n, out, L)
                self.zs.append(z)
                if layer.act is None:
                    break
                spatial = a.shape[2:]
                self.out_shapes.append((layer.out, *spatial))
                slope, bend = activation_derivatives(layer.act, z)
                self.slopes.append(slope)
                self.bends.append(bend)
                a = layer.act(z).reshape(len(x), layer.out, *spatial)
                a, pick = _pool(layer, a)
                self.picks.append(pick)

    def backward(self, loss_grad: Callable) -> None:
        """deltas[j] = dLoss/dz_j (n, out_j, L_j), and curves[j] = sigma''(z_j) times the gradient reaching the
        activation: the part of d delta_j that moves with dz_j itself."""
        top = len(self.layers) - 1
        self.deltas = [None] * len(self.layers)
        self.curves = [None] * top
        self.deltas[top] = loss_grad(self.zs[top][..., 0])[..., None]
        for k in range(top - 1, -1, -1):
            back = self.unpool(k, _transpose(self.layers[k + 1], self.deltas[k + 1], self.in_shapes[k + 1]))
            self.deltas[k] = self.slopes[k] * back
            self.curves[k] = self.bends[k] * back

    def rows(self, sl: slice) -> _Forward:
        """The same pass for the examples ``sl`` of the chunk (views)."""
        sub = object.__new__(_Forward)
        sub.layers, sub.in_shapes, sub.out_shapes = self.layers, self.in_shapes, self.out_shapes
        sub._errors, sub._windows = {}, {}
        sub.inputs, sub.zs = [u[sl] for u in self.inputs], [z[sl] for z in self.zs]
        sub.slopes, sub.bends = [t[sl] for t in self.slopes], [t[sl] for t in self.bends]
        sub.picks = [None if p is None else p[sl] for p in self.picks]
        return sub

    def patches(self, j: int) -> torch.Tensor:
        """Layer j's unfolded inputs as one (n L_j, in'_j) matrix."""
        return self.inputs[j].reshape(-1, self.inputs[j].shape[2])

    def errors(self, j: int, positions_first: bool = False) -> torch.Tensor:
        """Layer j's deltas as one (out_j, n L_j) matrix, or (out_j, L_j n) with ``positions_first`` (kept once
        made)."""
        if (j, positions_first) not in self._errors:
            order = (1, 2, 0) if positions_first else (1, 0, 2)
            self._errors[j, positions_first] = self.deltas[j].permute(*order).reshape(self.deltas[j].shape[1], -1)
        return self._errors[j, positions_first]

    def windows(self, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pooling after layer k as sums over window slots (kept once made): each pooled position's window
        positions in z_k, one row per slot (:func:`_window_slots`), and for each slot the weight (n, C_k, pooled
        positions) the pooling gives that position at this point (max: 1 at its pick; avg: 1 / window size) times
        the activation's slope there, so that the pooled activation's tangent is sum_d weight_d * dz_k[slot d]."""
        if k not in self._windows:
            c, *spatial = self.out_shapes[k]
            slope = self.slopes[k]
            slots = _window_slots(self.layers[k], spatial, self.in_shapes[k + 1][1:]).to(slope.device)
            weights = []
            for where in slots:
                mask = torch.zeros(math.prod(spatial), dtype=slope.dtype, device=slope.device)
                mask[where] = 1.0
                weights.append(self.pool(k, (slope * mask)[None])[0].reshape(len(slope), c, -1))
            self._windows[k] = slots, weights
        return self._windows[k]

    def pool(self, k: int, t: torch.Tensor) -> torch.Tensor:
        """Tangents t (T, n, out_k, L_k) of layer k's activation through its pooling: (T, n, *in_shape[k+1])."""
        layer, (c, *spatial) = self.layers[k], self.out_shapes[k]
        count, n = t.shape[0], t.shape[1]
        if layer.pool == "max":  # the selection the pooling makes at this point
            pick = self.picks[k].reshape(1, n, c, -1).expand(count, -1, -1, -1)
            return t.gather(-1, pick).reshape(count, n, *self.in_shapes[k + 1])
        if layer.pool == "avg":
            avg = nn.functional.avg_pool2d if layer.dims == 2 else nn.functional.avg_pool1d
            return avg(t.reshape(count * n, c, *spatial), 2).reshape(count, n, *self.in_shapes[k + 1])
        return t.reshape(count, n, c, *spatial)

    def unpool(self, k: int, g: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`pool`: gradients g (N, *in_shape[k+1]) -> (N, out_k, L_k), N any batch."""
        layer, (c, *spatial) = self.layers[k], self.out_shapes[k]
        lead = g.shape[0]
        if layer.pool == "max":
            n = self.picks[k].shape[0]
            pick = self.picks[k].reshape(1, n, c, -1).expand(lead // n, -1, -1, -1).reshape(lead, c, -1)
            out = torch.zeros(lead, c, math.prod(spatial), dtype=g.dtype, device=g.device)
            return out.scatter_add_(-1, pick, g.reshape(lead, c, -1))
        if layer.pool == "avg":
            up = g
            for d in range(layer.dims):
                up = up.repeat_interleave(2, dim=2 + d)
            up = up / 2**layer.dims
            pads = [p for s, have in zip(reversed(spatial), reversed(up.shape[2:]), strict=True) for p in (0, s - have)]
            return nn.functional.pad(up, pads).reshape(lead, c, -1)
        return g.reshape(lead, c, -1)


def _pool(layer: _Layer, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's pooling of its activation a (n, C, *S), and for max pooling the flat positions it picks."""
    if layer.pool == "max":
        pool = nn.functional.max_pool2d if layer.dims == 2 else nn.functional.max_pool1d
        return pool(a, 2, return_indices=True)
    if layer.pool == "avg":
        pool = nn.functional.avg_pool2d if layer.dims == 2 else nn.functional.avg_pool1d
        return pool(a, 2), None
    return a, None


def cnn_hessian_into(
    target: Callable[[int, int], tuple[torch.Tensor, int, int]],
    net: nn.Sequential,
    in_shape: tuple[int, ...],
    pairs: list[tuple[int, int]],
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    max_rows: int,
    max_elements: int,
) -> None:
    """Add the blocks (j, m) in ``pairs`` (j >= m) of the Hessian of the mean loss over (x, y) of ``net`` (a
    :class:`sane_cli.models.CNN` copy in the working dtype, eval mode) into ``target(j, m) = (tensor, row of
    layer j's first parameter, column of layer m's first parameter)``, in parameters() order (module docstring).
    ``in_shape`` is one example's shape after the net's Unflatten; ``max_elements`` bounds the tangents of a
    batch of directions, and examples are taken ``max_rows`` at most at a time."""
    layers = layers_of(net)
    top = len(layers) - 1
    by_m = {m: [j for j, mm in pairs if mm == m] for m in range(len(layers))}
    n = len(y)
    for start in range(0, n, max_rows):
        xb, yb = x[start : start + max_rows], y[start : start + max_rows]
        weight = len(yb) / n  # the chunk's share of the mean loss
        fwd = _Forward(layers, xb, in_shape)
        loss_grad = grad(lambda out, yb=yb, weight=weight: loss_fn(out, yb) * weight)
        fwd.backward(loss_grad)

        def loss_hvp(t: torch.Tensor, z=fwd.zs[top][..., 0], loss_grad=loss_grad) -> torch.Tensor:
            """loss''(logits) t for tangents t (T, n, classes)."""
            return torch.func.vmap(lambda v: torch.func.jvp(loss_grad, (z,), (v,))[1])(t)

        # piecewise-linear activations (relu, linear; max and average pooling are too) have no second derivative:
        # then H = J^T H_loss J (the Gauss-Newton part, from the logits' Jacobians) + the terms delta_j x dU_j
        # (j > m) alone, and a direction needs no backward pass
        split = not any(bool(curve.any()) for curve in fwd.curves)
        if split:
            _gauss_newton_into(target, fwd, pairs, loss_hvp, max_elements)
            for j, m in pairs:
                if j == m + 1:
                    _adjacent_into(target, fwd, m, max_elements)
                elif j == top == m + 2:
                    _top_from_two_below_into(target, fwd, m, max_elements)
        # memory of one direction's tangents per example, from its layer up: dz, d delta and the unfolded dU
        per = [2 * z.shape[1] * z.shape[2] + u.shape[1] * u.shape[2] for z, u in zip(fwd.zs, fwd.inputs, strict=True)]
        for m, rows in by_m.items():
            rows = [j for j in rows if j > m + 1 and (j, m) != (top, top - 2)] if split else rows
            if not rows:
                continue
            size = layers[m].out * layers[m].width
            count = max(1, min(size, max_elements // max(1, sum(per[m:]) * len(yb))))
            for t0 in range(0, size, count):
                t1 = min(size, t0 + count)
                _directions(target, fwd, m, rows, t0, t1, None if split else loss_hvp)


def _gauss_newton_into(target, fwd: _Forward, pairs, loss_hvp, max_elements: int) -> None:
    """Add sum_i J_j,i^T H_i J_m,i of every block (j, m) in ``pairs``: J_l,i (classes, P_l) the Jacobian of
    example i's logits in layer l's weights, sum_a B_l,i[:, :, a] (x) U_l,i[a] with B_l = dlogits/dz_l, and H_i
    the loss's Hessian in the logits (with the chunk's weight). Examples in groups whose Jacobians stay within
    ``max_elements``.

    The blocks between convolutions are Gram matrices M_j^T M_m of the Jacobians scaled by H_i's square root
    (:func:`_loss_root`: M_l,i = R_i J_l,i, rank(H_i) rows per example, 9 of 10 for cross-entropy, carried back
    through the net as one batch from R_i's rows, :func:`_jacobians`), those on the diagonal half computed
    (:func:`_gram_into`); blocks with the final linear layer in Kronecker form (:func:`_top_blocks`)."""
    layers, top = fwd.layers, len(fwd.layers) - 1
    n, classes = fwd.inputs[0].shape[0], layers[top].out
    dtype, device = fwd.inputs[0].dtype, fwd.inputs[0].device
    eye = torch.eye(classes, dtype=dtype, device=device)
    hess = loss_hvp(eye[:, None, :].expand(classes, n, classes)).permute(1, 2, 0)  # (n, classes, classes)
    root = _loss_root(hess)  # (n, rank, classes) with R_i^T R_i = H_i, or None
    total = sum(layer.out * layer.width for layer in layers)
    group = max(1, min(n, max_elements // (2 * classes * total)))
    # blocks between convolutions, W~ layout; when all of them are asked for (and R exists), as one Gram matrix
    # of the convolutions' M_l side by side: one product of P_conv columns runs nearer the cores' peak than one
    # per block (31 against 43 GFLOP/s at 784 against 1,632 columns)
    convs = [(j, m) for j in range(top) for m in range(j + 1)]
    whole = root is not None and sorted((j, m) for j, m in pairs if j < top) == convs
    sizes = [_size(layer) for layer in layers[:top]]
    starts = [sum(sizes[:k]) for k in range(top + 1)]
    if whole:
        everything = torch.zeros(starts[top], starts[top], dtype=dtype, device=device)
    else:
        grams = {(j, m): torch.zeros(sizes[j], sizes[m], dtype=dtype, device=device) for j, m in pairs if j < top}
    # blocks (top, m) in the layouts _top_blocks adds to: (in'_top, classes P_m) for a convolution, (pairs of
    # classes c <= d, in'_top^2) for the linear layer's own; to (classes, in'_top, P_m) at the end
    width, cs, ds = layers[top].width, *torch.triu_indices(classes, classes, device=device)
    tops = {m: torch.zeros(width, classes * _size(layers[m]), dtype=dtype, device=device) if m < top
            else torch.zeros(len(cs), width * width, dtype=dtype, device=device)
            for j, m in pairs if j == top}  # fmt: skip
    orders = {k: torch.argsort(_order(layers[k], device).reshape(-1)) for k in range(top)}  # W~ to parameter order
    for i0 in range(0, n, group):
        sub = fwd.rows(slice(i0, i0 + group))
        rows = len(sub.inputs[0])
        h = hess[i0 : i0 + rows]
        if root is None:  # (a loss whose Hessian in the logits is not positive semidefinite): J_l,i, then H_i J_l,i
            jac = _jacobians(sub, eye[None].expand(rows, classes, classes))
            scaled = {k: h @ jac[k] for k in jac}
        else:  # M_l,i = R_i J_l,i, and H_i J_l,i = R_i^T M_l,i
            jac = _jacobians(sub, root[i0 : i0 + rows])
            scaled = {k: root[i0 : i0 + rows].transpose(1, 2) @ jac[k] for k in jac}
        if whole:
            _gram_into(everything, torch.cat([jac[k].reshape(-1, sizes[k]) for k in range(top)], 1))
        else:
            for (j, m), gram in grams.items():
                left, right = jac[j].reshape(-1, sizes[j]), jac[m].reshape(-1, sizes[m])
                if root is None:  # J_j^T (H J_m)
                    gram.addmm_(left.T, scaled[m].reshape(-1, sizes[m]))
                elif j == m:
                    _gram_into(gram, right)
                else:
                    gram.addmm_(left.T, right)
        _top_blocks(tops, sub.inputs[top][:, 0, :], h[:, cs, ds], scaled)
    for m, piece in tops.items():
        if m < top:  # (in'_top, classes P_m) -> (classes, in'_top, P_m)
            piece = piece.view(width, classes, -1).transpose(0, 1)
        else:  # block (c, :, d, :) = sum_i H_i[c, d] a~_i a~_i^T, for c <= d and, H_i being symmetric, d > c
            full = piece.new_zeros(classes, classes, width, width)
            full[cs, ds] = full[ds, cs] = piece.view(-1, width, width)
            piece = full.transpose(1, 2).reshape(classes, width, classes * width)
        _add(target, top, m, layers, piece, torch.arange(piece.shape[2], device=device))
    # _gram_into filled the lower triangles: of the whole matrix, or of each diagonal block (with R)
    if whole:
        everything = everything.tril() + everything.tril(-1).T
        grams = {(j, m): everything[starts[j] : starts[j + 1], starts[m] : starts[m + 1]] for j, m in convs}
    elif root is not None:
        grams = {(j, m): gram.tril() + gram.tril(-1).T if j == m else gram for (j, m), gram in grams.items()}
    for (j, m), gram in grams.items():
        gram = gram[orders[j]][:, orders[m]]  # W~'s entries to parameter order
        t, r0, c0 = target(j, m)
        t[r0 : r0 + gram.shape[0], c0 : c0 + gram.shape[1]] += gram


def _jacobians(fwd: _Forward, vectors: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each example's ``vectors`` (n, r, classes) times its Jacobian of the logits in each convolution's W~_k,
    (n, r, P_k): the r vectors carried back through the net as one batch, B_k = v^T dlogits/dz_k, then
    sum_a B_k[:, :, a] (x) U_k[a] as one batched product per layer."""
    layers, top = fwd.layers, len(fwd.layers) - 1
    rows, r = vectors.shape[0], vectors.shape[1]
    b = vectors.transpose(0, 1)[..., None]  # (r, rows, out_top, 1)
    jac = {}
    for k in range(top - 1, -1, -1):
        back = _transpose(layers[k + 1], b.reshape(r * rows, *b.shape[2:]), fwd.in_shapes[k + 1])
        b = fwd.slopes[k][None] * fwd.unpool(k, back).reshape(r, rows, layers[k].out, -1)
        # (rows, r out_k, L) x (rows, L, in'_k)
        jac[k] = (b.permute(1, 0, 2, 3).reshape(rows, r * layers[k].out, -1) @ fwd.inputs[k]).reshape(rows, r, -1)
    return jac


def _top_blocks(tops: dict, a: torch.Tensor, h: torch.Tensor, scaled: dict) -> None:
    """Add the Gauss-Newton blocks (top, m) of examples with linear-layer inputs a~ (rows, in'_top), loss
    Hessians h (rows, pairs of classes c <= d) and H_i J_m,i ``scaled`` (rows, C, P_m) into ``tops[m]`` ((in'_top,
    C P_m) for a convolution m, (pairs, in'_top^2) for the linear layer), in the Kronecker form of the linear
    layer's Jacobian I (x) a~_i: n P_top P_m multiply-adds, not the C times more of J^T (H J)."""
    for m, block in tops.items():
        if m in scaled:  # sum_i a~_i (x) H_i J_m,i: one product (in'_top, rows) x (rows, C P_m)
            block.addmm_(a.T, scaled[m].reshape(len(a), -1))
        else:  # sum_i H_i[c, d] a~_i a~_i^T for each pair c <= d: one product (pairs, rows) x (rows, in'^2)
            block.addmm_(h.T, (a[:, :, None] * a[:, None, :]).reshape(len(a), -1))


def _loss_root(hess: torch.Tensor) -> torch.Tensor | None:
    """R (n, r, classes) with R_i^T R_i = H_i for the loss's Hessians in the logits H (n, classes, classes), r the
    largest rank among them (eigenvalues within 100 rounding units of zero, relative to the largest, dropped:
    cross-entropy's H_i has the ones vector in its null space); None if some H_i has a negative eigenvalue
    beyond that."""
    values, vectors = torch.linalg.eigh(hess)  # ascending
    tol = 100 * torch.finfo(hess.dtype).eps * float(values.abs().max()) if values.numel() else 0.0
    if bool((values < -tol).any()):
        return None
    rank = max(1, int((values > tol).sum(1).max()))
    values, vectors = values[:, -rank:], vectors[:, :, -rank:]
    return (vectors * values.clamp_min(0).sqrt()[:, None, :]).transpose(1, 2)


def _gram_into(out: torch.Tensor, m: torch.Tensor, leaf: int = 256) -> None:
    """Add the lower triangle of m^T m into ``out`` (its upper triangle, outside the diagonal blocks of ``leaf``
    columns, left untouched): the columns halved, the two halves' Gram matrices recursively and the one product
    between them, for about half the multiply-adds of the full product."""
    cols = m.shape[1]
    if cols <= leaf:
        out.addmm_(m.T, m)
        return
    half = cols // 2
    _gram_into(out[:half, :half], m[:, :half], leaf)
    _gram_into(out[half:, half:], m[:, half:], leaf)
    out[half:, :half].addmm_(m[:, half:].T, m[:, :half])


def _size(layer: _Layer) -> int:
    return layer.out * layer.width


def _adjacent_into(target, fwd: _Forward, m: int, max_elements: int) -> None:
    """Add the terms sum_i sum_a delta_j,i[r, a] dU_j,i[s, a] of block (j = m + 1, m), all of layer m's
    directions at once: along W~_m[p, q], layer j's input moves only in channel p, by V[c, i, p, q]
    (:func:`_moved_inputs`, c its positions); a kernel offset k of layer j reads it shifted by k, so each offset
    is one product over positions and examples, (out_j, L_j n) x (L_j n, out_m in'_m), on a view of V."""
    layers = fwd.layers
    lower, upper = layers[m], layers[m + 1]
    n, dtype, device = fwd.inputs[m].shape[0], fwd.inputs[m].dtype, fwd.inputs[m].device
    positions = math.prod(fwd.in_shapes[m + 1][1:])  # the pooled positions, layer j's input
    taps = 1 if upper.conv is None else math.prod(upper.conv.kernel_size)
    width = upper.weight.shape[1]  # C_in K of layer j: its weight columns (the bias's input does not move)
    group = max(1, min(lower.width, max_elements // max(1, 2 * n * lower.out * positions * taps)))
    for q0 in range(0, lower.width, group):
        q1 = min(lower.width, q0 + group)
        if upper.conv is None:
            v = _moved_inputs(fwd, m, q0, q1)  # (*positions, n, p, q); the linear layer reads s = (p, c)
            e = fwd.errors(m + 1) @ v.reshape(positions, n, -1)  # (c, out_j, p q)
            e = e.reshape(positions, upper.out, lower.out, q1 - q0).permute(1, 2, 0, 3)  # (out_j, p, c, q)
        else:  # s = (p, kernel offset k): V shifted by k, summed over the positions a and examples
            padded = _moved_inputs(fwd, m, q0, q1, upper.conv.padding)  # (*positions', n, p, q)
            errors = fwd.errors(m + 1, positions_first=True)
            e = torch.stack([errors @ _shifted(upper, padded, o).reshape(errors.shape[1], -1) for o in _offsets(upper)])
            e = e.reshape(taps, upper.out, lower.out, q1 - q0).permute(1, 2, 0, 3)  # (out_j, p, k, q)
        # (out_j, in'_j, p, q): the row s = (p', c) meets the direction (p, q) only where p' = p
        piece = torch.zeros(upper.out, upper.width, lower.out, q1 - q0, dtype=dtype, device=device)
        view = piece[:, :width].view(upper.out, lower.out, -1, lower.out, q1 - q0)
        for p in range(lower.out):
            view[:, p, :, p, :] = e[:, p]
        channels, columns = torch.arange(lower.out, device=device), torch.arange(q0, q1, device=device)
        _add(target, m + 1, m, layers, piece, (channels[:, None] * lower.width + columns).reshape(-1))


def _directions(target, fwd: _Forward, m: int, rows: list[int], t0: int, t1: int, loss_hvp) -> None:
    """The columns t0:t1 of layer m's block column: carry each parameter's direction dz_m forward to the logits
    and d delta back down to layer m, adding each block (j, m), j in ``rows``, on the way; without ``loss_hvp``
    (the Gauss-Newton split) only forward to the highest of ``rows``, adding their delta_j x dU_j."""
    layers, top = fwd.layers, len(fwd.layers) - 1
    u_m = fwd.inputs[m]  # (n, L, in')
    ids = torch.arange(t0, t1, device=u_m.device)
    p, q = ids // layers[m].width, ids % layers[m].width  # the direction of W~_m[p, q]
    count, n = t1 - t0, u_m.shape[0]
    du = {}  # tangents of each layer's unfolded input, as rows (count, n, L, C K); the bias's 1 does not move
    # the Gauss-Newton split needs the tangents only up to the highest layer they add to; else up to the logits
    last = top if loss_hvp is not None else max(rows)
    if loss_hvp is None:  # rows j > m + 1 only: no du[m + 1] needed, so z_m's one moving channel goes straight on
        dz, start = {m + 1: _one_channel_step(fwd, m, p, q)}, m + 1
    else:
        dz, start = {m: torch.zeros(count, n, layers[m].out, u_m.shape[1], dtype=u_m.dtype, device=u_m.device)}, m
        dz[m][torch.arange(count), :, p, :] = u_m[:, :, q].permute(2, 0, 1)  # (count, n, L): the input column q
    for k in range(start, last):
        da = fwd.pool(k, fwd.slopes[k][None] * dz[k])
        unfolded = _unfold(layers[k + 1], da.reshape(count * n, *da.shape[2:]))
        du[k + 1] = unfolded.reshape(count, n, *unfolded.shape[1:])
        if k + 1 < last or loss_hvp is not None:  # (the split needs no tangent of the highest layer's output)
            dz[k + 1] = (du[k + 1] @ layers[k + 1].weight.T).transpose(2, 3)  # one matrix product
    if loss_hvp is None:  # the Gauss-Newton split: only delta_j x dU_j for the rows j > m
        for j in rows:
            piece = torch.zeros(count, layers[j].out, layers[j].width, dtype=u_m.dtype, device=u_m.device)
            piece[:, :, : du[j].shape[3]] = fwd.errors(j) @ du[j].reshape(count, -1, du[j].shape[3])
            _add(target, j, m, layers, piece.permute(1, 2, 0), ids)
        return
    d_delta = loss_hvp(dz[top][..., 0])[..., None]  # (count, n, classes, 1)
    for j in range(top, m - 1, -1):
        if j < top:
            back = _transpose(layers[j + 1], d_delta.reshape(count * n, *d_delta.shape[2:]), fwd.in_shapes[j + 1])
            d_delta = fwd.slopes[j][None] * fwd.unpool(j, back).reshape(count, n, layers[j].out, -1)
            d_delta = d_delta + fwd.curves[j][None] * dz[j]
        if j not in rows:
            continue
        # sum over examples and positions: one matrix product each, (count out_j, n L) x (n L, in'_j)
        piece = d_delta.transpose(1, 2).reshape(count * layers[j].out, -1) @ fwd.patches(j)
        piece = piece.reshape(count, layers[j].out, -1)
        if j > m:  # (out_j, n L) x (count, n L, C K)
            w = du[j].shape[3]
            piece[:, :, :w] += fwd.errors(j) @ du[j].reshape(count, -1, w)
        _add(target, j, m, layers, piece.permute(1, 2, 0), ids)


def _top_from_two_below_into(target, fwd: _Forward, m: int, max_elements: int) -> None:
    """Add the terms sum_i delta_top,i[r] dU_top,i[s] of block (top, m = top - 2) (the Gauss-Newton split), all
    of layer m's directions in a few matrix products over examples, none carried one by one.

    Along W~_m[p, q], layer l = m + 1's input moves in channel p alone, by T_i[p, q, :] = pool_m(sigma'(z_m,i[p])
    U_m,i[:, q]); z_l moves by dz_l,i[c, a] = sum_k W_l[c, p, k] T_i[p, q, a + k] (kernel offsets k about a), and
    the linear layer's input s = (c, t) by sum_a w_i[c, t, a] dz_l,i[c, a], w the pooling's weight of position a
    in the window t (max: the pick) times sigma'(z_l). So

        H[(r, c, t), (p, q)] = sum_k W_l[c, p, k] Y[t, k, (r, c), (p, q)],
        Y[t, k] = sum_i sum_(a in window t) (delta_top,i[r] w_i[c, t, a]) T_i[p, q, a + k]

    one product over examples for each pooled position t, window slot and kernel offset, (out_top C_l) x P_m:
    more multiply-adds than carrying each of the P_m directions forward (n C_l L_l K apiece), but all in matrix
    products, where the directions' tangents (P_m n C_l L_l of them) are memory traffic."""
    layers, top = fwd.layers, len(fwd.layers) - 1
    lower, mid = layers[m], layers[m + 1]
    n, dtype, device = fwd.inputs[0].shape[0], fwd.inputs[0].dtype, fwd.inputs[0].device
    c_l, *spatial = fwd.out_shapes[m + 1]  # z_l's channels and positions
    pooled = fwd.in_shapes[top][1:]
    taps = math.prod(mid.conv.kernel_size)
    size, width = lower.out * lower.width, lower.width
    slots = _window_slots(mid, spatial, pooled)  # (slots, t): each window's positions in z_l
    offsets = _offsets(mid)
    # per example: V, padded, and one slot's positions of it
    per = size * (2 * math.prod(fwd.in_shapes[m + 1][1:]) + slots.shape[1])
    group = max(1, min(n, max_elements // per))
    y = torch.zeros(slots.shape[1], taps, layers[top].out * c_l, size, dtype=dtype, device=device)
    for i0 in range(0, n, group):
        sub = fwd.rows(slice(i0, i0 + group))
        padded = _moved_inputs(sub, m, pad=mid.conv.padding)  # (*S', rows, p, q): T[p, q] amid its padding
        rows = padded.shape[mid.dims]
        padded = padded.reshape(*padded.shape[: mid.dims], rows, size)
        delta = fwd.deltas[top][i0 : i0 + rows, :, 0]  # (rows, out_top)
        for where, weight in zip(*sub.windows(m + 1), strict=True):  # weight (rows, C_l, t)
            a = torch.einsum("ir,ict->tirc", delta, weight).reshape(len(where), rows, -1)
            for k, offset in enumerate(offsets):  # T at a + k for the window's positions a: (t, rows, P_m)
                b = _shifted(mid, padded, offset).reshape(-1, rows, size)[where]
                y[:, k].baddbmm_(a.transpose(1, 2), b)
    kernels = mid.weight.reshape(c_l, lower.out, taps)  # W_l[c, p, k]
    y = y.reshape(slots.shape[1], taps, layers[top].out, c_l, lower.out, width)
    piece = torch.einsum("tkrcpq,cpk->rctpq", y, kernels).reshape(layers[top].out, -1, size)
    if layers[top].bias is not None:  # the bias's input (1) does not move
        piece = torch.cat([piece, piece.new_zeros(piece.shape[0], 1, size)], 1)
    _add(target, top, m, layers, piece, torch.arange(size, device=device))


def _window_slots(layer: _Layer, spatial: list[int], pooled: tuple[int, ...]) -> torch.Tensor:
    """The positions (flat, in the layer's output of shape ``spatial``) of each pooled position's window, one row
    per slot of the window (2-wide pooling: 2 slots in 1-D, 4 in 2-D; none: 1, the position itself)."""
    if layer.pool is None:
        return torch.arange(math.prod(spatial))[None]
    grids = torch.meshgrid(*[torch.arange(s) for s in pooled], indexing="ij")
    rows = []
    for offset in itertools.product(*[range(2)] * len(pooled)):
        flat = torch.zeros_like(grids[0])
        for g, o, size in zip(grids, offset, spatial, strict=True):
            flat = flat * size + 2 * g + o
        rows.append(flat.reshape(-1))
    return torch.stack(rows)


def _moved_inputs(fwd: _Forward, m: int, q0: int = 0, q1: int | None = None, pad: tuple[int, ...] = ()) -> torch.Tensor:
    """V (*S, n, out_m, q1 - q0), positions first: along W~_m[p, q], layer m + 1's input (positions S) moves in
    channel p alone, by V[..., p, q], the pooling of sigma'(z_m[p]) U_m[:, q]; taken window slot by window slot,
    from the unfolded inputs U_m at the slot's positions (no tangent of the unpooled z_m per direction). With
    ``pad`` (layer m + 1's padding), V amid zeros of that width on each side of S: (*S', n, out_m, q)."""
    c, pooled = fwd.out_shapes[m][0], fwd.in_shapes[m + 1][1:]
    u = fwd.inputs[m][:, :, q0:q1].transpose(0, 1)  # (L_m, n, q)
    pad = pad or (0,) * len(pooled)
    out = u.new_zeros(*[s + 2 * p for s, p in zip(pooled, pad, strict=True)], u.shape[1], c, u.shape[2])
    v = out[tuple(slice(p, p + s) for p, s in zip(pad, pooled, strict=True))]  # the positions S, a view
    for d, (where, weight) in enumerate(zip(*fwd.windows(m), strict=True)):
        w = weight.permute(2, 0, 1).reshape(*pooled, -1, c, 1)  # (*S, n, p, 1)
        moved = u[where].reshape(*pooled, -1, 1, u.shape[2])  # (*S, n, 1, q)
        if d == 0:
            torch.mul(w, moved, out=v)
        else:
            v.addcmul_(w, moved)
    return out


def _offsets(layer: _Layer) -> list[tuple[int, ...]]:
    """The convolution's kernel offsets, in the order of its weight's columns."""
    return list(itertools.product(*[range(w) for w in layer.conv.kernel_size]))


def _shifted(layer: _Layer, padded: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """What kernel offset ``offset`` reads of the padded input (*S', ...) at each output position: (*L, ...)."""
    out = [s - w + 1 for s, w in zip(padded.shape[: layer.dims], layer.conv.kernel_size, strict=True)]
    return padded[tuple(slice(o, o + size) for o, size in zip(offset, out, strict=True))]


def _one_channel_step(fwd: _Forward, m: int, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """dz_(m+1) (count, n, out_(m+1), L_(m+1)) along the directions W~_m[p, q] (layer m + 1 a convolution). Such
    a direction moves channel p of z_m alone, by U_m[:, q]: through the activation's slope and the pooling of
    that channel, then layer m + 1's kernels for input channel p, W_(m+1)[:, p, :]. Carrying the one channel
    rather than all C (of which C - 1 are zero) costs 1/C of the unfolded product, and of its memory."""
    layers, u_m = fwd.layers, fwd.inputs[m]
    lower, upper = layers[m], layers[m + 1]
    count, n = len(p), u_m.shape[0]
    t = None  # (count, n, pooled positions): channel p's pooled slope times U_m[:, q], window slot by slot
    for where, weight in zip(*fwd.windows(m), strict=True):
        term = weight[:, p, :].transpose(0, 1) * u_m[:, where[:, None], q].permute(2, 0, 1)
        t = term if t is None else t.add_(term)
    pooled = fwd.in_shapes[m + 1][1:]
    patches = _unfold(upper, t.reshape(count * n, 1, *pooled))  # (count n, L_(m+1), K): channel p's patches
    patches = patches.reshape(count, n, patches.shape[1], patches.shape[2])
    kernels = upper.weight.reshape(upper.out, lower.out, -1)[:, p, :]  # (out_(m+1), count, K)
    return torch.einsum("dnbk,cdk->dncb", patches, kernels)


def _add(target, j: int, m: int, layers: list[_Layer], piece: torch.Tensor, ids: torch.Tensor) -> None:
    """Add ``piece`` (out_j, in'_j, directions) into block (j, m) of ``target``: W~'s (row, column) to the
    parameter order (the weight row-major, then the bias)."""
    t, a, b = target(j, m)
    piece = piece.reshape(layers[j].out, layers[j].width, len(ids))
    if layers[j].bias is not None:  # rows in parameter order: the weight's (row-major), then the bias's
        piece = torch.cat([piece[:, :-1].reshape(-1, len(ids)), piece[:, -1]])
    piece = piece.reshape(-1, len(ids))
    cols = _order(layers[m], piece.device).reshape(-1)[ids]
    t[a : a + len(piece)].index_add_(1, b + cols, piece)  # rows in order: one add along the columns, no sort


def _order(layer: _Layer, device) -> torch.Tensor:
    """The parameter index of each entry of W~ (out, in'): weight entries row-major, then the bias."""
    out, width = layer.out, layer.weight.shape[1]
    order = torch.arange(out * width, device=device).reshape(out, width)
    if layer.bias is not None:
        order = torch.cat([order, out * width + torch.arange(out, device=device)[:, None]], dim=1)
    return order
