"""The layer-ordered approximations and the iterative methods against the dense exact Hessian."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import make_config, reference_hessian
from omegaconf import OmegaConf

from sane_cli.curvature import layer_hessian, layer_hessian_blocks
from sane_cli.iterative import hutchinson, hvp_operator, krylov_trace, lanczos, slq
from sane_cli.losses import loss_function
from sane_cli.methods import measure
from sane_cli.models import MLP
from sane_cli.records import load_run
from sane_cli.training import train


def problem(depth=4, width=6, activation="tanh", loss="cross_entropy", n=80, seed=0):
    torch.manual_seed(seed)
    model = MLP(7, 3, depth, width, activation)
    x, y = torch.randn(n, 7), torch.randint(0, 3, (n,))
    loss_fn = loss_function(loss, 3)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    return model, loss_fn, x, y, ref


def layer_slices(model):
    sizes = [m.weight.numel() + m.bias.numel() for m in model if isinstance(m, torch.nn.Linear)]
    starts = np.cumsum([0, *sizes])
    return [slice(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_block_band_keeps_exactly_the_band(depth):
    model, loss_fn, x, y, ref = problem(depth=depth)
    torch.testing.assert_close(layer_hessian(model, loss_fn, x, y, band=depth - 1), ref, rtol=1e-10, atol=1e-12)
    layers = layer_slices(model)
    for band in range(depth - 1):
        h = layer_hessian(model, loss_fn, x, y, band=band)
        for i, si in enumerate(layers):
            for j, sj in enumerate(layers):
                expected = ref[si, sj] if abs(i - j) <= band else torch.zeros_like(ref[si, sj])
                torch.testing.assert_close(h[si, sj], expected, rtol=1e-10, atol=1e-12)


def test_block_diag_eigenvalues_are_those_of_the_diagonal_blocks():
    model, loss_fn, x, y, ref = problem(depth=3)
    hcfg = OmegaConf.merge(make_config().hessian, {"method": "block_diag", "topk_vectors": 4})
    result = measure(model, loss_fn, x, y, hcfg)
    blocks = [np.linalg.eigvalsh(ref[s, s].numpy()) for s in layer_slices(model)]
    np.testing.assert_allclose(result.eigenvalues, np.sort(np.concatenate(blocks))[::-1], atol=1e-11)
    # each top vector is an eigenvector of the block-diagonal matrix
    blockdiag = torch.block_diag(*[ref[s, s] for s in layer_slices(model)]).numpy()
    v = result.eigenvectors
    np.testing.assert_allclose(blockdiag @ v, v * result.eigenvalues[: v.shape[1]], atol=1e-9)
    assert set(layer_hessian_blocks(model, loss_fn, x, y, band=0)) == {(0, 0), (1, 1), (2, 2)}


def test_lanczos_top_k_to_1e6(device):
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    ev = np.linalg.eigvalsh(ref.numpy())[::-1]
    matvec, p = hvp_operator(model.to(device), loss_fn, x.to(device), y.to(device), max_rows=30)
    top = lanczos(matvec, p, 10, tol=1e-10, max_iter=p, seed=3, device=device)
    assert top.converged and top.iterations < p
    np.testing.assert_allclose(top.values, ev[:10], rtol=1e-6)
    np.testing.assert_allclose(top.magnitudes, np.sort(np.abs(ev))[::-1][:10], rtol=1e-6)
    np.testing.assert_allclose(ref.numpy() @ top.vectors, top.vectors * top.values, atol=1e-6 * ev[0])
    assert top.lambda_min == pytest.approx(ev[-1], rel=1e-3)


@pytest.mark.parametrize("keep_bytes,vectorise", [(2**29, True), (1, True), (2**29, False), (1, False)])
def test_hvp_operator_streams_chunks_beyond_its_memory(keep_bytes, vectorise, monkeypatch):
    """Products with recorded chunk graphs and with chunks recomputed at each product (keep_bytes=1 keeps only
    the first) both equal the dense reference, for single vectors and batches, the batches vectorised or taken
    one vector at a time (the operator's choice, forced here both ways)."""
    from sane_cli import curvature

    monkeypatch.setattr(curvature, "vectorises", lambda n, macs, conv: vectorise)
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    matvec, p = hvp_operator(model, loss_fn, x, y, max_rows=17, keep_bytes=keep_bytes)
    v = torch.randn(5, p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(matvec(v), v @ ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(matvec(v[:1]), v[:1] @ ref, rtol=1e-10, atol=1e-12)


def test_lanczos_reports_non_convergence():
    model, loss_fn, x, y, _ = problem(depth=3, width=8)
    matvec, p = hvp_operator(model, loss_fn, x, y)
    assert not lanczos(matvec, p, 10, tol=1e-14, max_iter=12).converged


def test_slq_and_hutchinson_within_four_standard_errors():
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    ev = np.linalg.eigvalsh(ref.numpy())
    matvec, p = hvp_operator(model, loss_fn, x, y)
    scale = 0.5 * np.abs(ev).max()
    exact = {
        "trace": ev.sum(),
        "n_eff": np.sum(np.abs(ev) / (np.abs(ev) + 0.5)),
        "sane": np.sum(np.abs(ev) / (np.abs(ev) + scale)),
    }
    fs = {
        "trace": lambda t: t,
        "n_eff": lambda t: np.abs(t) / (np.abs(t) + 0.5),
        "sane": lambda t: np.abs(t) / (np.abs(t) + scale),
    }
    top = lanczos(matvec, p, 5, tol=1e-10)
    for seed in range(4):
        top_pairs = (top.values, top.vectors)
        # full reorthogonalisation, none, and (with deflation) none and selective
        cases = [(True, None, False), (False, None, False), (False, top_pairs, False), (False, top_pairs, True)]
        for reorth, deflate, reproject in cases:
            quad = slq(matvec, p, probes=20, steps=40, seed=seed, reorthogonalize=reorth, deflate=deflate,
                       reproject=reproject)  # fmt: skip
            for name, f in fs.items():
                est, se = quad.trace_of(f)
                assert abs(est - exact[name]) <= 4 * se, (name, seed, reorth, reproject, est, se, exact[name])
        for deflate in (None, (top.values, top.vectors)):
            est, se = hutchinson(matvec, p, probes=30, seed=seed, deflate=deflate)
            assert abs(est - exact["trace"]) <= 4 * se
    a, b = slq(matvec, p, probes=4, steps=10, seed=7), slq(matvec, p, probes=4, steps=10, seed=7)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.weights, b.weights)


def _net_like_operator(p=400, seed=0, ev=None):
    """A symmetric matrix with a net's kind of spectrum (a few large outliers, many eigenvalues of both signs
    near 0, where |x| / (|x| + a) has its kink) unless ``ev`` is given, its matvec and eigendecomposition."""
    rng = np.random.default_rng(seed)
    if ev is None:
        ev = np.concatenate([rng.uniform(1, 10, 5), rng.normal(0, 1e-3, p - 45), rng.uniform(-0.1, 0.3, 40)])
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    h = torch.as_tensor((q * ev) @ q.T)
    return (lambda v: v @ h), ev, q


def _probe_measures(p, probes, seed, q):
    """The weights (v^T q_i)^2 of SLQ's Rademacher probes on the eigenvectors q_i (columns of q)."""
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randint(0, 2, (probes, p), generator=gen) * 2 - 1).double().numpy()
    return (v @ q) ** 2


def test_slq_rules_are_exact_for_polynomials_of_their_degree():
    """The averaged Gauss rule from m Lanczos steps integrates x^k exactly for k <= 2m - 1, and both rules for
    H^2's measure ((m - 1) // 2 nodes each, one fixed at 0 for Gauss-Radau) integrate y^k = x^2k for
    k <= 2 j - 1: the bracket collapses to the exact value. Against v^T H^k v from the eigendecomposition."""
    matvec, ev, q = _net_like_operator(p=60, ev=np.linspace(-1, 2, 60))
    m, probes = 7, 3
    quad = slq(matvec, 60, probes=probes, steps=m, seed=2)
    truth = lambda f: np.mean(_probe_measures(60, probes, 2, q) @ f(ev))  # noqa: E731
    for k in range(2 * m):
        f = lambda t, k=k: t**k  # noqa: E731
        assert quad.trace_of(f)[0] == pytest.approx(truth(f), rel=1e-9, abs=1e-12), k
    # one degree more and the rule is no longer exact
    assert quad.trace_of(lambda t: t ** (2 * m))[0] != pytest.approx(truth(lambda t: t ** (2 * m)), rel=1e-6)
    j = (m - 1) // 2
    for k in range(2 * j):
        lower, upper = quad.bracket_of(lambda t, k=k: t ** (2 * k))
        exact = truth(lambda t, k=k: t ** (2 * k))
        assert lower == pytest.approx(exact, rel=1e-9) and upper == pytest.approx(exact, rel=1e-9), k


def test_slq_bracket_holds_and_bounds_the_estimate():
    """For f(x) = |x| / (|x| + a), the Gauss and Gauss-Radau rules on H^2's measure bracket the mean of the
    probes' exact v^T f(H) v; the bracket narrows with the steps and bounds the estimate's quadrature error;
    the averaged Gauss rule is closer than the Gauss rule at few steps."""
    p, probes = 400, 6
    matvec, ev, q = _net_like_operator(p)
    for a in (0.5, 5.0):
        g = lambda t, a=a: t / (t + a)  # noqa: E731
        widths = []
        for steps in (8, 16, 32):
            for seed in range(3):
                quad = slq(matvec, p, probes=probes, steps=steps, seed=seed)
                truth = np.mean(_probe_measures(p, probes, seed, q) @ g(np.abs(ev)))
                lower, upper = quad.bracket_of(g)
                est, _ = quad.trace_of(lambda t, g=g: g(np.abs(t)))
                assert lower <= truth * (1 + 1e-12) and truth <= upper * (1 + 1e-12), (a, steps, seed)
                assert abs(est - truth) <= max(upper - est, est - lower)
                widths.append(upper - lower)
                if steps == 8:
                    gauss = np.mean(quad.scales * np.sum(quad.weights * g(np.abs(quad.nodes)), 1))
                    assert abs(est - truth) < abs(gauss - truth), (a, seed, est, gauss, truth)
        assert widths[-1] < widths[3] < widths[0]


def test_slq_bias_bounds_at_the_edges():
    """Empty (NaN) where no bound holds (fewer than 3 Lanczos steps, no full reorthogonalisation,
    eig_mode=clip); 0 where the quadrature is exact (steps >= P, or every eigenpair deflated); else a
    bound that covers the error against the dense eigenvalues beyond the sampling error."""
    model, loss_fn, x, y, ref = problem(depth=3, width=6)
    ev = np.abs(np.linalg.eigvalsh(ref.numpy()))
    exact = np.sum(ev / (ev + 0.5))
    base = OmegaConf.merge(make_config().hessian, {"method": "slq", "probes": 8})
    cases = [({"steps": 2}, "nan"), ({"reorth": "none"}, "nan"), ({"eig_mode": "clip"}, "nan"), ({"steps": 500}, 0.0),
             ({"topk": 500}, 0.0), ({"steps": 4}, "finite"), ({"steps": 12, "deflate": False}, "finite")]  # fmt: skip
    for change, expected in cases:
        row = measure(model, loss_fn, x, y, OmegaConf.merge(base, change)).row
        bounds = np.array([row["n_eff_bound"], row["sane_bound"]])
        if expected == "nan":
            assert np.isnan(bounds).all(), change
        elif expected == 0.0:
            assert (bounds == 0).all(), change
        else:
            assert (bounds > 0).all() and abs(row["n_eff"] - exact) <= row["n_eff_bound"] + 3 * row["n_eff_se"], change


ALL_RUNS = (("float32", 0), ("float32", 1), ("float32", 2), ("float64", 3))


@pytest.mark.parametrize(
    "width,at_start,trained",
    [
        (24, (("float32", 0),), (("float64", 3),)),
        pytest.param(48, ALL_RUNS, ALL_RUNS, marks=pytest.mark.slow),
    ],
)
def test_default_slq_is_unbiased_on_a_net_of_thousands_of_parameters(width, at_start, trained):
    """hessian=slq with its defaults on an MLP of 1,354 parameters (3,850 with the slow tests), at
    initialisation and after 300 steps of GD at lr 0.5: N_eff, SANE and the count of negative eigenvalues it can
    resolve within 3 standard errors of the dense eigenvalues for every seed (in float32, as auto runs it above
    exact_max_params, and in float64), and within the bias bound plus 3 standard errors. The default suite runs
    one seed a state (float32 at initialisation, float64 trained); the slow tests four a state on the larger net."""
    torch.manual_seed(0)
    x = torch.randn(128, 20)
    y = (x[:, :10].argmax(1) + (torch.rand(128) < 0.2) * torch.randint(0, 10, (128,))) % 10
    model, loss_fn = MLP(20, 10, depth=3, width=width, activation="relu"), loss_function("cross_entropy", 10)
    for state, runs in (("at start", at_start), ("trained", trained)):
        if state == "trained":
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            for _ in range(300):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
        ev = np.linalg.eigvalsh(layer_hessian(model, loss_fn, x, y).numpy())
        a = np.abs(ev)
        exact = {"n_eff": np.sum(a / (a + 0.5)), "sane": np.sum(a / (a + 0.5 * a.max()))}
        for dtype, seed in runs:
            hcfg = OmegaConf.merge(make_config("hessian=slq").hessian, {"seed": seed, "dtype": dtype})
            row = measure(model, loss_fn, x, y, hcfg).row
            for name, value in exact.items():
                error, se, bound = abs(row[name] - value), row[f"{name}_se"], row[f"{name}_bound"]
                assert error <= 3 * se and error <= bound + 3 * se, (state, dtype, seed, name, row[name], value)
            # the negative count below the quadrature's resolution: hundreds of eigenvalues lie within it of 0
            # (a count below 0 itself split them at random: 532 below 0 trained, of which 23 below -resolution)
            below = row["negative_below"]
            assert below == pytest.approx((ev.max() - ev.min()) / hcfg.steps, rel=0.05)
            assert np.sum(np.abs(ev) < below) > 100
            count, se = np.sum(ev < -below), row["n_negative_se"]
            assert 0 < se and abs(row["n_negative"] - count) <= 3 * se + 1, (state, row["n_negative"], se, count)


def test_deflation_counts_the_top_eigenvalues_exactly_and_shrinks_the_error():
    """Deflating the top eigenpairs: the probes lose their component along them (so the deflated part is
    exact), and the trace's standard error falls when the top eigenvalues dominate."""
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    ev = np.linalg.eigvalsh(ref.numpy())
    matvec, p = hvp_operator(model, loss_fn, x, y)
    top = lanczos(matvec, p, 8, tol=1e-10)
    plain = hutchinson(matvec, p, probes=64, seed=1)[1]
    deflated = hutchinson(matvec, p, probes=64, seed=1, deflate=(top.values, top.vectors))[1]
    assert deflated < 0.8 * plain, (deflated, plain)
    # deflating every eigenvector leaves nothing to estimate: the trace is exact with zero error
    full = lanczos(matvec, p, p, tol=1e-12, max_iter=p)
    est, se = hutchinson(matvec, p, probes=4, seed=0, deflate=(full.values, full.vectors))
    assert est == pytest.approx(ev.sum(), rel=1e-8) and se < 1e-8 * np.abs(ev).max()
    quad = slq(matvec, p, probes=4, steps=5, seed=0, deflate=(full.values, full.vectors))
    assert quad.trace_of(lambda t: t)[0] == pytest.approx(ev.sum(), rel=1e-8)


def test_krylov_deflation_is_exact_for_the_trace_without_converged_eigenvectors():
    """Deflating a trace by a Lanczos run's whole Krylov basis V (stopped long before convergence): V is
    orthonormal, its recorded tr V^T H V is the dense one, the projected probes have no component in it, the
    estimate stays within four standard errors of the dense trace over seeds, and its standard error is below
    that of the top eigenpairs' deflation on the same probes; a run to the end (an invariant subspace: all
    but H's null space) makes it exact."""
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    h = ref.numpy()
    matvec, p = hvp_operator(model, loss_fn, x, y)
    top = lanczos(matvec, p, 3, tol=1e-2, keep_basis=True)
    m = top.iterations
    assert 3 <= m < p // 4 and top.krylov is not None
    v = torch.cat([b for b in top.krylov.rows.blocks])[:m].numpy()
    np.testing.assert_allclose(v @ v.T, np.eye(m), atol=1e-12)
    assert top.krylov.trace == pytest.approx(np.trace(v @ h @ v.T), rel=1e-12)
    probe = torch.randn(5, p, dtype=torch.float64)
    assert np.abs((probe - top.krylov.project(probe)).numpy() @ v.T).max() < 1e-12
    ses = {"krylov": [], "eigenpairs": []}
    for seed in range(6):
        est, se = hutchinson(matvec, p, probes=30, seed=seed, deflate=top.krylov)
        assert abs(est - np.trace(h)) <= 4 * se, (seed, est, se, np.trace(h))
        ses["krylov"].append(se)
        ses["eigenpairs"].append(hutchinson(matvec, p, probes=30, seed=seed, deflate=(top.values, top.vectors))[1])
    assert np.mean(ses["krylov"]) < 0.9 * np.mean(ses["eigenpairs"]), ses
    whole = lanczos(matvec, p, p, tol=1e-12, max_iter=p, keep_basis=True)
    est, se = hutchinson(matvec, p, probes=4, seed=0, deflate=whole.krylov)
    assert est == pytest.approx(np.trace(h), rel=1e-10) and se < 1e-8 * np.abs(h).max()


def test_krylov_trace_alone_is_unbiased_and_exact_on_the_whole_space():
    """The trace alone from a short Krylov basis and deflated probes: within four standard errors of the dense
    trace over seeds, a smaller standard error than plain Hutchinson on as many products, exact when the basis
    spans the whole space."""
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    h = ref.numpy()
    matvec, p = hvp_operator(model, loss_fn, x, y)
    calls = []
    counted = lambda v: calls.append(len(v)) or matvec(v)  # noqa: E731
    est, se = krylov_trace(counted, p, steps=10, probes=20, seed=0, batch=5)
    assert sum(calls) == 30 and abs(est - np.trace(h)) <= 4 * se
    ses = []
    for seed in range(1, 6):
        est, se = krylov_trace(matvec, p, steps=10, probes=20, seed=seed)
        assert abs(est - np.trace(h)) <= 4 * se, (seed, est, se, np.trace(h))
        ses.append((se, hutchinson(matvec, p, probes=30, seed=seed)[1]))
    assert np.mean([a for a, _ in ses]) < np.mean([b for _, b in ses]), ses
    est, se = krylov_trace(matvec, p, steps=p, probes=3)
    assert est == pytest.approx(np.trace(h), rel=1e-10) and se < 1e-8 * np.abs(h).max()
    for bad in ({"steps": 0}, {"probes": 0}):
        with pytest.raises(ValueError, match="steps >= 1 and probes >= 1"):
            krylov_trace(matvec, p, **bad)


def test_auto_runs_slq_in_its_own_precision_above_the_threshold():
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    n_params = sum(p.numel() for p in model.parameters())
    hcfg = OmegaConf.merge(make_config().hessian, {"exact_max_params": n_params - 1, "steps": 20})
    result = measure(model, loss_fn, x, y, hcfg)
    assert (result.method, result.dtype) == ("slq", "float32")
    assert result.row["lambda_max"] == pytest.approx(np.linalg.eigvalsh(ref.numpy())[-1], rel=1e-5)
    hcfg.auto_slq_dtype = "float64"
    assert measure(model, loss_fn, x, y, hcfg).dtype == "float64"


@pytest.mark.parametrize("method", ["block_diag", "block_band", "lanczos", "slq", "auto"])
def test_runs_with_each_method(tmp_path, method, device):
    train(
        make_config(f"hessian={method}", "hessian.probes=8", "hessian.steps=20", f"device={device}"), tmp_path / "run"
    )
    run = load_run(tmp_path / "run")
    assert run.status == "completed"
    assert (run.hessian.method == ("exact" if method == "auto" else method)).all()
    last = run.hessian.iloc[-1]
    assert last.converged
    if method in ("lanczos", "slq"):
        assert last.trace_se > 0
    # which reorthogonalisation ran is recorded for slq (the default: full), and left empty otherwise
    assert (run.hessian.reorth == "full").all() if method == "slq" else run.hessian.reorth.isna().all()
    # SLQ's bias bounds: finite with full reorthogonalisation; 0 where every eigenvalue is taken; none for lanczos
    bounds = run.hessian[["n_eff_bound", "sane_bound"]]
    if method == "slq":
        assert (bounds >= 0).all().all() and np.isfinite(bounds).all().all()
    else:
        assert bounds.isna().all().all() if method == "lanczos" else (bounds == 0).all().all()
    if method == "slq":
        assert last.sane_se > 0 and np.isfinite(last.sane)
        ev, _ = run.spectrum(20)
        with np.load(tmp_path / "run" / "spectra" / "step_20.npz") as f:
            assert f["slq_nodes"].shape == (8, 20)
        assert len(ev) == 10


def test_slq_clip_mode_against_exact():
    """eig_mode=clip: negative eigenvalues count as 0, SANE's scale is the k-th largest eigenvalue."""
    model, loss_fn, x, y, ref = problem(depth=3, width=8, activation="relu")
    ev = np.linalg.eigvalsh(ref.numpy())
    hcfg = OmegaConf.merge(
        make_config().hessian, {"method": "slq", "eig_mode": "clip", "k": 2, "probes": 30, "steps": 60}
    )
    row = measure(model, loss_fn, x, y, hcfg).row
    pos = np.clip(ev, 0, None)
    scale = 0.5 * np.sort(pos)[-2]
    assert abs(row["sane"] - np.sum(pos / (pos + scale))) <= 4 * row["sane_se"]
    assert abs(row["n_eff"] - np.sum(pos / (pos + 0.5))) <= 4 * row["n_eff_se"]
    assert row["lambda_max"] == pytest.approx(ev[-1], rel=1e-6)


def test_lanczos_values_only_reaches_the_eigenvalue_tolerance_sooner():
    model, loss_fn, x, y, ref = problem(depth=3, width=8)
    ev = np.linalg.eigvalsh(ref.numpy())[::-1]
    matvec, p = hvp_operator(model, loss_fn, x, y)
    vectors = lanczos(matvec, p, 3, tol=1e-8, max_iter=p, seed=2)
    values = lanczos(matvec, p, 3, tol=1e-8, max_iter=p, seed=2, values_only=True)
    assert values.converged and values.iterations < vectors.iterations
    np.testing.assert_allclose(values.values, ev[:3], rtol=1e-7)


def test_laplace_evidence_is_exact_for_bayesian_linear_regression():
    """A linear model under the MSE loss (a unit-variance Gaussian likelihood) at the posterior mode: the
    Laplace evidence is the exact marginal likelihood, log N(y_c | 0, I + X X^T / gamma) summed over the
    outputs (scipy), up to the likelihood's constant n C / 2 log 2 pi."""
    from scipy.stats import multivariate_normal

    torch.manual_seed(0)
    n, d, c, gamma = 30, 4, 3, 2.5
    x, labels = torch.randn(n, d, dtype=torch.float64), torch.randint(0, c, (n,))
    targets = torch.nn.functional.one_hot(labels, c).double().numpy()
    xt = np.hstack([x.numpy(), np.ones((n, 1))])  # weights and bias share the prior
    mode = np.linalg.solve(xt.T @ xt + gamma * np.eye(d + 1), xt.T @ targets)  # (d + 1, c)
    model = MLP(d, c, depth=1, width=1).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(mode[:d].T))
        model[0].bias.copy_(torch.as_tensor(mode[d]))
    hcfg = OmegaConf.merge(make_config().hessian, {"method": "exact", "prior_precision": gamma})
    row = measure(model, loss_function("mse", c), x, labels, hcfg).row
    cov = np.eye(n) + xt @ xt.T / gamma
    exact = sum(multivariate_normal(np.zeros(n), cov).logpdf(targets[:, j]) for j in range(c))
    assert row["log_evidence"] - n * c / 2 * np.log(2 * np.pi) == pytest.approx(exact, rel=1e-10)
    # the iterative methods have no whole spectrum: no evidence
    slq_cfg = OmegaConf.merge(hcfg, {"method": "slq", "probes": 4, "steps": 5})
    assert np.isnan(measure(model, loss_function("mse", c), x, labels, slq_cfg).row["log_evidence"])


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_preconditioned_sharpness_against_the_dense_preconditioned_hessian(weight_decay, device):
    """lambda_max(P^-1 (H + wd I)) by Lanczos on P^-1/2 (H + wd I) P^-1/2 against the eigenvalues of the dense
    non-symmetric P^-1 (H + wd I), for a diagonal P spread over two orders of magnitude."""
    from sane_cli.methods import preconditioned_sharpness

    model, loss_fn, x, y, ref = problem(depth=3, activation="gelu")
    gen = torch.Generator().manual_seed(3)
    diagonal = [10 ** (2 * torch.rand(p.shape, generator=gen, dtype=torch.float64) - 1) for p in model.parameters()]
    p = torch.cat([d.reshape(-1) for d in diagonal])
    dense = (ref + weight_decay * torch.eye(len(p), dtype=torch.float64)) / p[:, None]
    expected = float(torch.linalg.eigvals(dense).real.max())
    hcfg = OmegaConf.merge(make_config().hessian, {"tol": 1e-10, "max_iter": 400})
    model, x, y = model.to(device), x.to(device), y.to(device)
    got = preconditioned_sharpness(model, loss_fn, x, y, hcfg, [d.to(device) for d in diagonal], weight_decay)
    assert got == pytest.approx(expected, rel=1e-8)
    assert abs(expected - float(torch.linalg.eigvalsh(ref)[-1])) > 0.1 * expected  # P changes the answer
