"""One exact curvature checkpoint: the cost of building H against the cost of its eigendecomposition.

For MLPs on MNIST-1D with about 4,000 and 8,000 parameters (Hessian subset of 256 examples, float64),
measured side by side in one process:

  build (ours)        sane_cli.curvature.hessian, i.e. mlp_hessian: the layer-structured build
  generic (ours)      sane_cli.curvature.generic_hessian: vmapped reverse-over-reverse HVPs with unit vectors
  build (baseline)    torch.func.hessian (jacfwd over jacrev) of the same loss, the plain approach
  eigvalsh (floor)    torch.linalg.eigvalsh(H): all eigenvalues, no vectors
  spectrum (ours)     sane_cli.curvature.spectrum(H, 10): all eigenvalues and the top 10 eigenvectors
  eigh                torch.linalg.eigh(H): all eigenvalues and all eigenvectors

Run:  python benchmarks/exact_hessian.py [--widths 32] [--depths 4 8] [--subset 256] [--repeats 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import best_time, mnist1d_subset

from sane_cli.curvature import flatten_parameters, generic_hessian, hessian, loss_function, spectrum
from sane_cli.models import MLP


def baseline_hessian(model, loss_fn, x, y):
    """torch.func.hessian over the flat parameter vector: what a researcher would write first."""
    net = model.double()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    theta = flatten_parameters(net)
    x = x.double()

    def f(t):
        params = {n: v.view(s) for n, v, s in zip(names, t.split(sizes), shapes, strict=True)}
        return loss_fn(torch.func.functional_call(net, params, (x,)), y)

    return torch.func.hessian(f)(theta)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[32])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--subset", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip torch.func.hessian (slow, memory-hungry)")
    args = parser.parse_args()

    x, y = mnist1d_subset(args.subset)
    loss_fn = loss_function("cross_entropy", 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, subset {args.subset}, float64")
    header = (
        f"{'depth':>5} {'width':>5} {'params':>6} | {'build':>7} {'eigvalsh':>8} {'build/eig':>9} | "
        f"{'generic':>7} {'baseline':>8} {'base/build':>10} | {'spectrum':>8} {'eigh':>7} {'eigh/spec':>9}"
    )
    print(header)
    print("-" * len(header))
    measure(2, 8, x, y, loss_fn, 1, False)  # warm-up: the first torch.func call pays one-off set-up costs
    for width in args.widths:
        for depth in args.depths:
            print(measure(depth, width, x, y, loss_fn, args.repeats, not args.no_baseline)[0], flush=True)


def measure(depth: int, width: int, x, y, loss_fn, repeats: int, baseline: bool) -> tuple[str, dict]:
    torch.manual_seed(0)
    model = MLP(40, 10, depth, width)
    p = sum(q.numel() for q in model.parameters())
    h, t_build = best_time(lambda: hessian(model, loss_fn, x, y), repeats)
    g, t_generic = best_time(lambda: generic_hessian(model, loss_fn, x, y), repeats)
    assert torch.allclose(g, h, rtol=1e-8, atol=1e-12), "generic and structured builds disagree"
    del g
    _, t_eig = best_time(lambda: torch.linalg.eigvalsh(h), repeats)
    spec, t_spec = best_time(lambda: spectrum(h, 10), repeats)
    _, t_eigh = best_time(lambda: torch.linalg.eigh(h), repeats)
    t_base = float("nan")
    if baseline:
        ref, t_base = best_time(lambda: baseline_hessian(model, loss_fn, x, y), repeats)
        assert torch.allclose(ref, h, rtol=1e-8, atol=1e-12), "baseline and ours disagree"
        del ref
    assert np.allclose(spec.eigenvalues, torch.linalg.eigvalsh(h).flip(0).numpy(), rtol=1e-8, atol=1e-10)
    line = (
        f"{depth:>5} {width:>5} {p:>6} | {t_build:>6.2f}s {t_eig:>7.2f}s {t_build / t_eig:>9.2f} | "
        f"{t_generic:>6.2f}s {t_base:>7.2f}s {t_base / t_build:>10.1f} | "
        f"{t_spec:>7.2f}s {t_eigh:>6.2f}s {t_eigh / t_spec:>9.2f}"
    )
    return line, dict(build=t_build, eigvalsh=t_eig, generic=t_generic, baseline=t_base, spectrum=t_spec, eigh=t_eigh)


if __name__ == "__main__":
    main()
