"""Iterative curvature against PyHessian and curvlinops, side by side on the same model and data.

Models: MLPs on MNIST-1D (Hessian subset of 256 examples, float64 everywhere): depth 8 width 64
(28,234 parameters) and depth 8 width 128 (105,606). For each:

  hvp/grad         one Hessian-vector product against one gradient on the same data (ours: vmapped
                   reverse-over-reverse, single vector and per vector in a batch of 16; also
                   forward-over-reverse)
  top-1, top-10    the largest eigenvalues to 1e-3 relative error: ours (sane_cli.iterative.lanczos,
                   values_only: stopped on the eigenvalue error bound residual^2/gap),
                   PyHessian's `eigenvalues` (power iteration with deflation; at its default tol 1e-3, which
                   bounds the change between iterations, not the error, and at 1e-6, the ratio column),
                   curvlinops' HessianLinearOperator with scipy's eigsh; each checked against a tight
                   Lanczos reference
  trace            100 Rademacher probes: ours (sane_cli.iterative.hutchinson, batched) against PyHessian's
                   `trace`, with the standard error each reaches

and, at 7,978 parameters (depth 8 width 32), SANE and N_eff from SLQ against exact: as `sane-run hessian=slq`
runs it (the config's defaults, 8 and 16 probes) and as it ran before 0.6.

Run:  pip install -e ".[bench]" && python benchmarks/iterative.py      (--slq: the SLQ part only)
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import best_time, mnist1d_subset

from sane_cli.curvature import layer_hessian, spectrum
from sane_cli.iterative import hutchinson, hvp_operator, lanczos, slq
from sane_cli.measures import n_eff, sane
from sane_cli.models import MLP


def setup(depth, width, x, y):
    torch.manual_seed(0)
    model = MLP(40, 10, depth, width).double()
    return model, x.double(), y


def hvp_vs_grad(model, x, y, loss_fn):
    params = list(model.parameters())
    _, t_grad = best_time(lambda: torch.autograd.grad(loss_fn(model(x), y), params), 5)
    matvec, p = hvp_operator(model, loss_fn, x, y)
    v1, v16 = torch.randn(1, p, dtype=torch.float64), torch.randn(16, p, dtype=torch.float64)
    matvec(v1)
    _, t_hvp = best_time(lambda: matvec(v1), 5)
    _, t_hvp16 = best_time(lambda: matvec(v16), 3)
    # forward-over-reverse on the same function, for comparison
    from torch.func import functional_call, grad, jvp

    names = [n for n, _ in model.named_parameters()]
    theta = {n: q.detach() for n, q in model.named_parameters()}
    g = grad(lambda th: loss_fn(functional_call(model, th, (x,)), y))
    tangent = {n: torch.randn_like(t) for n, t in theta.items()}
    jvp(g, (theta,), (tangent,))
    _, t_fwd = best_time(lambda: jvp(g, (theta,), (tangent,)), 5)
    del names
    return matvec, p, dict(grad=t_grad, hvp=t_hvp, hvp16=t_hvp16 / 16, fwd=t_fwd)


def pyhessian_top(model, x, y, loss_fn, k, tol):
    from pyhessian import hessian as PyHessian

    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    try:
        torch.manual_seed(0)
        h = PyHessian(model, loss_fn, data=(x, y), cuda=False)
        (values, _), t = best_time(lambda: h.eigenvalues(top_n=k, tol=tol, maxIter=1000))
        # tol -inf: its stopping rule never fires, so it uses all 100 probes like ours
        (samples), t_trace = best_time(lambda: h.trace(maxIter=100, tol=float("-inf")))
    finally:
        torch.set_default_dtype(torch.float32)
    return np.array(values), t, np.array(samples), t_trace


def curvlinops_top(model, x, y, loss_fn, k):
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import eigsh

    params = [q for q in model.parameters() if q.requires_grad]
    op = HessianLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False).to_scipy()
    vals, t = best_time(lambda: eigsh(op, k=k, which="LA", tol=1e-3, return_eigenvectors=False))
    return np.sort(vals)[::-1], t


def main() -> None:
    x0, y0 = mnist1d_subset(256)
    loss_fn = torch.nn.CrossEntropyLoss()  # a module: curvlinops reads its reduction
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, subset 256, float64\n")
    for depth, width in [(8, 64), (8, 128)]:
        model, x, y = setup(depth, width, x0, y0)
        matvec, p, t = hvp_vs_grad(model, x, y, loss_fn)
        print(f"== MLP depth {depth} width {width}: {p} parameters")
        print(
            f"gradient {t['grad'] * 1e3:.1f} ms | HVP (ours, reverse-over-reverse) {t['hvp'] * 1e3:.1f} ms = "
            f"{t['hvp'] / t['grad']:.1f}x gradient; per vector in a batch of 16 {t['hvp16'] * 1e3:.1f} ms = "
            f"{t['hvp16'] / t['grad']:.1f}x; forward-over-reverse {t['fwd'] * 1e3:.1f} ms = {t['fwd'] / t['grad']:.1f}x"
        )
        tight = lanczos(matvec, p, 10, tol=1e-10, max_iter=600, seed=1)
        ref, ref_mag = tight.values, tight.magnitudes
        print(f"{'':<26}{'seconds':>9}{'rel. error':>12}{'PyHessian/ours':>16}{'curvlinops/ours':>17}")
        for k in (1, 10):
            ours, t_ours = best_time(
                lambda k=k, mv=matvec, p=p: lanczos(mv, p, k, tol=1e-3, max_iter=600, seed=0, values_only=True)
            )
            ph_loose, t_ph_loose, _, _ = pyhessian_top(model, x, y, loss_fn, k, 1e-3)
            ph_vals, t_ph, samples, t_tr = pyhessian_top(model, x, y, loss_fn, k, 1e-6)
            cl_vals, t_cl = curvlinops_top(model, x, y, loss_fn, k)
            err = lambda v, k=k, ref=ref: np.max(np.abs(np.sort(v)[::-1][:k] - ref[:k]) / np.abs(ref[:k]))  # noqa: E731
            # power iteration finds the largest |eigenvalues|, so PyHessian is checked against those
            err_mag = lambda v, k=k, r=ref_mag: np.max(np.abs(np.sort(np.abs(v))[::-1][:k] - r[:k]) / r[:k])  # noqa: E731
            print(
                f"top-{k:<3} ours (Lanczos)      {t_ours:>9.2f}{err(ours.values):>12.1e}"
                f"{t_ph / t_ours:>16.1f}{t_cl / t_ours:>17.1f}"
            )
            print(f"top-{k:<3} PyHessian tol 1e-3 {t_ph_loose:>9.2f}{err_mag(ph_loose):>12.1e}  (largest |lambda|)")
            print(f"top-{k:<3} PyHessian tol 1e-6 {t_ph:>9.2f}{err_mag(ph_vals):>12.1e}  (largest |lambda|)")
            print(f"top-{k:<3} curvlinops + eigsh {t_cl:>9.2f}{err(cl_vals):>12.1e}")
        (tr, se), t_ours = best_time(lambda mv=matvec, p=p: hutchinson(mv, p, probes=100, seed=0))
        print(
            f"trace, 100 probes: ours {t_ours:.2f} s ({tr:.4g} +- {se:.2g}); PyHessian {t_tr:.2f} s "
            f"({samples.mean():.4g} +- {samples.std(ddof=1) / np.sqrt(len(samples)):.2g}): {t_tr / t_ours:.1f}x\n"
        )

    slq_against_exact(x0, y0, loss_fn)


def slq_against_exact(x0, y0, loss_fn) -> None:
    """SANE and N_eff from SLQ as `sane-run hessian=slq` runs it (the config's defaults, through
    sane_cli.methods.measure), against exact, at 7,978 parameters; also with 16 probes, and as sane-run ran
    it before 0.6 (no reorthogonalisation, 80 steps, the Gauss rule)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sane_cli.methods import measure

    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        defaults = OmegaConf.merge(compose("config", overrides=["hessian=slq"]).hessian, {"dtype": "float64"})
    model, x, y = setup(8, 32, x0, y0)
    h, t_build = best_time(lambda: layer_hessian(model, loss_fn, x, y))
    ev, t_eig = best_time(lambda: spectrum(h).eigenvalues)  # noqa: F821 (h is bound above)
    exact = {"sane": sane(ev), "n_eff": n_eff(ev)}
    del h
    t_exact = t_build + t_eig
    p = sum(q.numel() for q in model.parameters())
    print(f"== SLQ at {p} parameters against exact ({t_exact:.1f} s), float64")

    def show(name, seconds, values):
        line = [f"{name}:"]
        for key, (est, se, bound) in values.items():
            line.append(
                f"{key} {est:.2f} +- {se:.2f} (bias bound {bound:.2f}) vs exact {exact[key]:.2f}: "
                f"{(est - exact[key]) / se:+.1f} SE, {est / exact[key] - 1:+.1%};"
            )
        print(" ".join(line), f"{seconds:.1f} s, {t_exact / seconds:.1f}x faster than exact")

    for probes in (int(defaults.probes), 16):
        hcfg = OmegaConf.merge(defaults, {"probes": probes})
        start = time.perf_counter()
        row = measure(model, loss_fn, x, y, hcfg).row
        name = f"defaults ({hcfg.reorth} reorthogonalisation, {hcfg.steps} steps, {probes} deflated probes)"
        show(name, time.perf_counter() - start, {k: (row[k], row[f"{k}_se"], row[f"{k}_bound"]) for k in exact})
    start = time.perf_counter()
    matvec, _ = hvp_operator(model, loss_fn, x, y)
    top = lanczos(matvec, p, 10, tol=1e-6, seed=0)
    quad = slq(matvec, p, probes=8, steps=80, seed=0, reorthogonalize=False, deflate=(top.values, top.vectors))
    values = {}
    for key, a in (("sane", 0.5 * top.magnitudes[0]), ("n_eff", 0.5)):
        values[key] = (*quad.trace_of(lambda t, a=a: np.abs(t) / (np.abs(t) + a), rule="gauss"), np.nan)
    show("before 0.6 (none, 80 steps, Gauss rule, 8 deflated probes)", time.perf_counter() - start, values)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--slq"]:
        slq_against_exact(*mnist1d_subset(256), torch.nn.CrossEntropyLoss())
    else:
        main()
