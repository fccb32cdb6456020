"""One exact curvature checkpoint: the cost of building H against the cost of its eigendecomposition.

For MLPs and CNNs on MNIST-1D (the Hessian of the mean loss over the whole 4,000-example training set, as
sane-run takes it by default, float64), measured side by side in one process:

  build (ours)        sane_cli.curvature.hessian, i.e. layer_hessian: the layer-structured build (the MLP's,
                      or sane_cli.conv_hessian's for the CNN)
  generic (ours)      sane_cli.curvature.generic_hessian: vmapped reverse-over-reverse HVPs with unit vectors
                      (the CNN's build before 0.7); for CNNs timed on --generic-columns columns and scaled to P
  build (baseline)    torch.func.hessian (jacfwd over jacrev) of the same loss, the plain approach
  eigvalsh (floor)    torch.linalg.eigvalsh(H): all eigenvalues, no vectors
  spectrum (ours)     sane_cli.curvature.spectrum(H, 10): all eigenvalues and the top 10 eigenvectors
  eigh                torch.linalg.eigh(H): all eigenvalues and all eigenvectors
  checkpoint          build + spectrum: what an exact checkpoint costs
  gram (CNN floor)    the Gauss-Newton part between the convolutions alone, as the build computes it: the half
                      Gram matrix M^T M of a random M of 9 n rows (rank of cross-entropy's Hessian in the 10
                      logits, times the examples) and P_conv columns (the convolutions' parameters), in one
                      piece. No exact build that forms these blocks from the examples' Jacobians costs less;
                      floor ratio = (gram + spectrum) / checkpoint of the MLP case listed before it, the least
                      CNN/MLP checkpoint ratio such a build can reach
  ratio (CNN)         the CNN's checkpoint / the checkpoint of the MLP case listed before it

Cases are DEPTHxWIDTH for an MLP and cDEPTHxCHANNELS for a CNN (kernel 3, max pooling). The defaults are CNNs of
depth 3 with 12, 16 and 24 channels (1,546, 2,442 and 4,810 parameters), each after an MLP of about its size:
the default run's net (depth 3, width 24: 1,834 parameters), depth 3 width 32 (2,698) and `sane-run depth=8`
(width 24: 4,834).
The baseline needs the whole P x P x n second-order graph in memory; it is run on 256 examples only
(--baseline-examples) and its time scaled by the number of examples (its cost is linear in them), which the
table marks.

Run:  python benchmarks/exact_hessian.py [--cases 3x24 c3x8] [--examples 4000] [--repeats 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import best_time, mnist1d_subset

from sane_cli.conv_hessian import _gram_into
from sane_cli.curvature import flatten_parameters, generic_hessian, hessian, spectrum
from sane_cli.iterative import hvp_operator
from sane_cli.losses import loss_function
from sane_cli.models import CNN, MLP


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
    parser.add_argument("--cases", nargs="+", default=["3x24", "c3x12", "3x32", "c3x16", "8x24", "c3x24"],
                        help="DEPTHxWIDTH (MLP) or cDEPTHxCHANNELS (CNN)")  # fmt: skip
    parser.add_argument("--generic-columns", type=int, default=64, help="CNN: HVP columns timed, scaled to P")
    parser.add_argument("--examples", type=int, default=4000, help="examples of the loss (4000: the training set)")
    parser.add_argument("--baseline-examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip torch.func.hessian (slow, memory-hungry)")
    args = parser.parse_args()

    x, y = mnist1d_subset(args.examples)
    loss_fn = loss_function("cross_entropy", 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.examples} examples, float64")
    header = (
        f"{'model':>9} {'params':>6} | {'build':>7} {'eigvalsh':>8} {'build/eig':>9} | {'generic':>7} "
        f"{'gen/build':>9} {'baseline':>9} {'base/build':>10} | {'spectrum':>8} {'eigh':>7} {'eigh/spec':>9} | "
        f"{'checkpoint':>10} | {'ratio':>6} {'gram':>6} {'floor ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    measure("2x8", x[:64], y[:64], loss_fn, 1, 0, 8)  # warm-up: the first torch.func call pays one-off set-up costs
    mlp = None  # the last MLP case's times, for the CNNs' floor ratio
    for case in args.cases:
        baseline = 0 if args.no_baseline else args.baseline_examples
        line, times = measure(case, x, y, loss_fn, args.repeats, baseline, args.generic_columns)
        if case.startswith("c"):
            t_gram = gram_time(model_of(case), len(y), args.repeats)
            mlp_checkpoint = mlp["build"] + mlp["spectrum"] if mlp else float("nan")
            ratio = (times["build"] + times["spectrum"]) / mlp_checkpoint
            floor = (t_gram + times["spectrum"]) / mlp_checkpoint
            line += f" | {ratio:>5.2f}x {t_gram:>5.2f}s {floor:>10.2f}x"
        else:
            mlp = times
        print(line, flush=True)
    if not args.no_baseline:
        print(
            f"(baseline: torch.func.hessian on {args.baseline_examples} examples, time x {args.examples} / "
            f"{args.baseline_examples}; checked against ours on those examples)"
        )


def model_of(case: str) -> torch.nn.Module:
    """DEPTHxWIDTH: an MLP on MNIST-1D; cDEPTHxCHANNELS: a CNN (kernel 3, max pooling)."""
    depth, size = (int(v) for v in case.lstrip("c").split("x"))
    torch.manual_seed(0)
    return CNN((40,), 10, depth=depth, channels=size) if case.startswith("c") else MLP(40, 10, depth, size)


def gram_time(model: torch.nn.Module, examples: int, repeats: int) -> float:
    """Seconds of the half Gram matrix M^T M, M random (9 examples, P_conv): the CNN build's floor."""
    convs = [mod for mod in model.modules() if isinstance(mod, torch.nn.Conv1d | torch.nn.Conv2d)]
    p_conv = sum(q.numel() for mod in convs for q in mod.parameters())
    m = torch.randn(9 * examples, p_conv, dtype=torch.float64)
    out = torch.zeros(p_conv, p_conv, dtype=torch.float64)
    return best_time(lambda: _gram_into(out, m), repeats)[1]


def generic_time(model, loss_fn, x, y, columns: int) -> float:
    """generic_hessian's time: all of it for an MLP; for a CNN (P products, minutes) ``columns`` of its
    columns, 8 unit vectors a product as generic_hessian takes them, scaled to P."""
    p = sum(q.numel() for q in model.parameters())
    if not isinstance(model, CNN) or columns >= p:
        return best_time(lambda: generic_hessian(model, loss_fn, x, y), 1)[1]

    def some_columns():
        matvec, _ = hvp_operator(model, loss_fn, x, y)
        for j in range(0, columns, 8):
            unit = torch.zeros(8, p, dtype=torch.float64)
            unit[torch.arange(8), torch.arange(j, j + 8)] = 1.0
            matvec(unit)

    return best_time(some_columns, 1)[1] * p / columns


def measure(case: str, x, y, loss_fn, repeats: int, baseline: int, columns: int) -> tuple[str, dict]:
    model = model_of(case)
    p = sum(q.numel() for q in model.parameters())
    h, t_build = best_time(lambda: hessian(model, loss_fn, x, y), repeats)
    if not isinstance(model, CNN):  # (the CNN's structured build is checked against torch.func below)
        g = generic_hessian(model, loss_fn, x, y)
        assert torch.allclose(g, h, rtol=1e-8, atol=1e-12), "generic and structured builds disagree"
        del g
    t_generic = generic_time(model, loss_fn, x, y, columns)
    _, t_eig = best_time(lambda: torch.linalg.eigvalsh(h), repeats)
    spec, t_spec = best_time(lambda: spectrum(h, 10), 1)
    _, t_eigh = best_time(lambda: torch.linalg.eigh(h), 1)
    t_base = float("nan")
    if baseline:
        xb, yb = x[:baseline], y[:baseline]
        ref, t_base = best_time(lambda: baseline_hessian(model_of(case), loss_fn, xb, yb), 1)
        assert torch.allclose(ref, hessian(model, loss_fn, xb, yb), rtol=1e-8, atol=1e-12), "baseline and ours disagree"
        del ref
        t_base *= len(y) / baseline
    assert np.allclose(spec.eigenvalues, torch.linalg.eigvalsh(h).flip(0).numpy(), rtol=1e-8, atol=1e-10)
    line = (
        f"{case:>9} {p:>6} | {t_build:>6.2f}s {t_eig:>7.2f}s {t_build / t_eig:>9.2f} | {t_generic:>6.1f}s "
        f"{t_generic / t_build:>9.1f} {t_base:>8.1f}s {t_base / t_build:>10.1f} | "
        f"{t_spec:>7.2f}s {t_eigh:>6.2f}s {t_eigh / t_spec:>9.2f} | {t_build + t_spec:>9.2f}s"
    )
    return line, dict(build=t_build, eigvalsh=t_eig, generic=t_generic, baseline=t_base, spectrum=t_spec, eigh=t_eigh)


if __name__ == "__main__":
    main()
