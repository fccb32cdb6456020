"""The exact Hessian and its spectrum against independent references: a dense float64 Hessian from
torch.func (forward-over-reverse over a flat parameter vector), the closed-form Hessian of linear
regression, and torch.linalg.eigh."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import reference_hessian

from sane_cli.curvature import generic_hessian, hessian, layer_hessian, spectrum
from sane_cli.losses import loss_function
from sane_cli.measures import n_eff, sane
from sane_cli.models import MLP

CASES = [
    # depth, width, activation, bias, loss
    (1, 4, "relu", True, "cross_entropy"),
    (2, 5, "relu", True, "cross_entropy"),
    (3, 4, "tanh", True, "cross_entropy"),
    (3, 4, "gelu", False, "mse"),
    (2, 6, "softplus", True, "mse"),
    (4, 3, "elu", True, "cross_entropy"),
]


@pytest.mark.parametrize("builder", ["mlp", "generic"])
@pytest.mark.parametrize("depth,width,activation,bias,loss", CASES)
def test_hessian_matches_dense_reference(depth, width, activation, bias, loss, builder, device):
    torch.manual_seed(depth * 10 + width)
    n, d, c = 37, 5, 3
    model = MLP(d, c, depth, width, activation, bias)
    x, y = torch.randn(n, d), torch.randint(0, c, (n,))
    loss_fn = loss_function(loss, c)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)  # on the CPU
    model, xd, yd = model.to(device), x.to(device), y.to(device)
    # small blocks and data chunks exercise the chunked accumulation
    if builder == "mlp":  # tiny temporaries exercise the chunking over units
        h = layer_hessian(model, loss_fn, xd, yd, dtype=torch.float64, max_rows=10, max_elements=50)
    else:
        h = generic_hessian(model, loss_fn, xd, yd, dtype=torch.float64, block=7, max_rows=10)
    assert h.dtype == torch.float64 and h.shape == ref.shape and h.device.type == device
    h = h.cpu()
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


CNN_CASES = [
    # input shape, depth, channels, kernel, pooling, activation, bias, loss
    ((12,), 2, 3, 3, "max", "relu", True, "cross_entropy"),
    ((13,), 3, 2, 3, "avg", "tanh", True, "mse"),  # odd lengths: the pooling drops the last position
    ((2, 9), 1, 3, 5, "none", "gelu", False, "cross_entropy"),
    ((1, 6, 5), 2, 3, 3, "max", "elu", True, "mse"),  # 2-D, odd width
    ((3, 4, 4), 2, 2, 1, "avg", "softplus", True, "cross_entropy"),
    ((1, 5, 7), 2, 2, 3, "none", "linear", False, "mse"),
    ((10,), 3, 2, 5, "max", "relu", False, "mse"),
    # piecewise-linear with every pooling, 1-D and 2-D: the Gauss-Newton split carries a direction's one moving
    # channel into the next layer alone (conv_hessian._one_channel_step)
    ((11,), 3, 3, 3, "avg", "relu", True, "mse"),
    ((3, 6, 6), 2, 2, 3, "max", "relu", True, "cross_entropy"),
    ((2, 6, 5), 2, 3, 3, "avg", "linear", True, "cross_entropy"),
    ((2, 5, 6), 3, 2, 3, "none", "relu", True, "mse"),
]


@pytest.mark.parametrize("shape,depth,channels,kernel,pooling,activation,bias,loss", CNN_CASES)
def test_cnn_hessian_matches_dense_reference(shape, depth, channels, kernel, pooling, activation, bias, loss, device):
    """The layer-structured CNN build (sane_cli.conv_hessian) against torch.func's dense Hessian, 1-D and 2-D
    convolutions, every pooling, smooth and piecewise-linear activations, both losses, with and without bias;
    tiny chunks of examples and directions exercise the accumulation."""
    from sane_cli.models import CNN

    torch.manual_seed(len(shape) * 10 + depth)
    model = CNN(shape, 3, depth=depth, channels=channels, kernel=kernel, pooling=pooling, activation=activation,
                bias=bias)  # fmt: skip
    x, y = torch.randn(17, *shape), torch.randint(0, 3, (17,))
    loss_fn = loss_function(loss, 3)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    model, xd, yd = model.to(device), x.to(device), y.to(device)
    h = layer_hessian(model, loss_fn, xd, yd, max_rows=6, max_elements=300).cpu()
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


def test_cnn_gauss_newton_without_the_loss_root(monkeypatch):
    """A loss whose Hessian in the logits had a negative eigenvalue would take the plain J^T (H J) products
    instead of the Gram matrices of R J: forced here, the build still equals the dense reference."""
    from sane_cli import conv_hessian
    from sane_cli.models import CNN

    monkeypatch.setattr(conv_hessian, "_loss_root", lambda hess: None)
    torch.manual_seed(5)
    model = CNN((10,), 3, depth=2, channels=3, kernel=3, pooling="max", activation="relu")
    x, y = torch.randn(13, 10), torch.randint(0, 3, (13,))
    loss_fn = loss_function("cross_entropy", 3)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    torch.testing.assert_close(layer_hessian(model, loss_fn, x, y, max_rows=5), ref, rtol=1e-10, atol=1e-12)


def test_loss_root_and_half_gram():
    """R_i^T R_i = H_i for both losses' Hessians in the logits, with rank(H_i) rows (cross-entropy's 9 of 10);
    None for an indefinite H_i; _gram_into's lower triangle equals that of M^T M at sizes that split unevenly."""
    from sane_cli.conv_hessian import _gram_into, _loss_root

    torch.manual_seed(0)
    z = torch.randn(7, 10, dtype=torch.float64)
    for name, rank in (("cross_entropy", 9), ("mse", 10)):
        loss = loss_function(name, 10)
        y = torch.randint(0, 10, (7,))
        hess = torch.stack(
            [torch.func.hessian(lambda v, i=i, loss=loss, y=y: loss(v[None], y[i : i + 1]))(z[i]) for i in range(7)]
        )
        root = _loss_root(hess)
        assert root.shape == (7, rank, 10)
        torch.testing.assert_close(root.transpose(1, 2) @ root, hess, rtol=1e-12, atol=1e-14)
    indefinite = torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))[None]
    assert _loss_root(indefinite) is None
    for cols, leaf in ((7, 2), (300, 256), (53, 8)):
        m = torch.randn(11, cols, dtype=torch.float64)
        out = torch.zeros(cols, cols, dtype=torch.float64)
        _gram_into(out, m, leaf)
        torch.testing.assert_close(out.tril(), (m.T @ m).tril(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "relu"])  # relu: the Gauss-Newton split's paths, band by band
def test_cnn_layer_blocks_are_the_dense_blocks_in_layer_order(activation):
    """block_band's bands of a CNN are those of the dense Hessian, its layers (the convolutions, then the linear
    layer) in input-to-output order; the widest band is the exact Hessian."""
    from sane_cli.curvature import layer_hessian_blocks, layer_sizes
    from sane_cli.models import CNN

    torch.manual_seed(3)
    model = CNN((11,), 4, depth=2, channels=3, kernel=3, pooling="max", activation=activation)
    x, y = torch.randn(29, 11), torch.randint(0, 4, (29,))
    loss_fn = loss_function("cross_entropy", 4)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    sizes = layer_sizes(model)
    assert sizes == [3 * 1 * 3 + 3, 3 * 3 * 3 + 3, 4 * 3 * 2 + 4]  # 11 -> pooled 5 -> pooled 2 positions
    starts = np.cumsum([0, *sizes])
    blocks = layer_hessian_blocks(model, loss_fn, x, y, band=1)
    assert set(blocks) == {(0, 0), (1, 1), (2, 2), (1, 0), (2, 1)}
    for (j, m), block in blocks.items():
        torch.testing.assert_close(
            block, ref[starts[j] : starts[j + 1], starts[m] : starts[m + 1]], rtol=1e-10, atol=1e-12
        )
    banded = layer_hessian(model, loss_fn, x, y, band=1)
    assert torch.all(banded[starts[2] :, : starts[1]] == 0) and torch.all(banded[: starts[1], starts[2] :] == 0)
    torch.testing.assert_close(layer_hessian(model, loss_fn, x, y, band=2), ref, rtol=1e-10, atol=1e-12)


def test_linear_regression_closed_form():
    """Depth 1, MSE: H = I_C (x) M with M = mean of [x;1][x;1]^T, in (W row-major, b) order."""
    torch.manual_seed(0)
    n, d, c = 50, 4, 3
    model = MLP(d, c, depth=1, width=1)
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randint(0, c, (n,))
    h = hessian(model, loss_function("mse", c), x, y)
    xt = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    m = xt.T @ xt / n
    expected = torch.zeros(c * (d + 1), c * (d + 1), dtype=torch.float64)
    w_idx = lambda o, j: o * d + j  # noqa: E731
    b_idx = lambda o: c * d + o  # noqa: E731
    for o in range(c):
        idx = [w_idx(o, j) for j in range(d)] + [b_idx(o)]
        expected[np.ix_(idx, idx)] = m
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    # its eigenvalues are those of M, each C times
    ev = spectrum(h).eigenvalues
    np.testing.assert_allclose(ev, np.sort(np.repeat(np.linalg.eigvalsh(m.numpy()), c))[::-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p,k", [(1, 1), (2, 2), (9, 3), (120, 10), (300, 0), (300, 5)])
def test_spectrum_matches_eigh(p, k):
    g = torch.Generator().manual_seed(p)
    a = torch.randn(p, p, dtype=torch.float64, generator=g)
    a = a + a.T
    spec = spectrum(a, k)
    vals, vecs = torch.linalg.eigh(a)
    np.testing.assert_allclose(spec.eigenvalues, vals.flip(0).numpy(), rtol=1e-10, atol=1e-10)
    assert spec.eigenvectors.shape == (p, k)
    ref = vecs.flip(1)[:, :k].numpy()
    # the same vectors up to sign, and orthonormal
    np.testing.assert_allclose(np.abs(np.sum(spec.eigenvectors * ref, axis=0)), 1.0, atol=1e-9)
    np.testing.assert_allclose(spec.eigenvectors.T @ spec.eigenvectors, np.eye(k), atol=1e-9)
    np.testing.assert_allclose(a.numpy() @ spec.eigenvectors, spec.eigenvectors * spec.eigenvalues[:k], atol=1e-8)


def test_spectrum_float32():
    a = torch.randn(40, 40)
    a = a + a.T
    spec = spectrum(a, 2)
    np.testing.assert_allclose(spec.eigenvalues, torch.linalg.eigvalsh(a.double()).flip(0).numpy(), atol=1e-4)


def test_measures_on_a_real_hessian():
    """The pipeline's N_eff and SANE equal the formulas applied to the dense reference spectrum."""
    torch.manual_seed(3)
    model = MLP(6, 4, depth=3, width=5, activation="tanh")
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    loss_fn = loss_function("cross_entropy", 4)
    ev = spectrum(hessian(model, loss_fn, x, y)).eigenvalues
    ref = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss_fn, x, y).numpy())
    assert n_eff(ev, 0.5) == pytest.approx(float(np.sum(np.abs(ref) / (np.abs(ref) + 0.5))), rel=1e-10)
    scale = 0.5 * np.abs(ref).max()
    assert sane(ev, 0.5, 1) == pytest.approx(float(np.sum(np.abs(ref) / (np.abs(ref) + scale))), rel=1e-10)
