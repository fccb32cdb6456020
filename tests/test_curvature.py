"""The exact Hessian and its spectrum against independent references: a dense float64 Hessian from
torch.func (forward-over-reverse over a flat parameter vector), the closed-form Hessian of linear
regression, and torch.linalg.eigh."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import reference_hessian

from sane_cli.curvature import generic_hessian, hessian, mlp_hessian, spectrum
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
        h = mlp_hessian(model, loss_fn, xd, yd, dtype=torch.float64, max_rows=10, max_elements=50)
    else:
        h = generic_hessian(model, loss_fn, xd, yd, dtype=torch.float64, block=7, max_rows=10)
    assert h.dtype == torch.float64 and h.shape == ref.shape and h.device.type == device
    h = h.cpu()
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


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
