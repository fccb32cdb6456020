"""auto's cost estimates against measured checkpoints: exact and SLQ, side by side, per model.

For each case, one checkpoint of the whole 4,000-example MNIST-1D training loss by ``hessian.method=exact``
(float64) and by ``slq`` in auto's SLQ dtype (float32), each timed through ``sane_cli.methods.measure`` as
sane-run calls it; beside them the estimates of ``sane_cli.costs``, the method auto picks and what its pick
cost against the faster of the two (auto keeps exact while it is estimated at most twice SLQ's cost, so up to
2 there is by design).

    python benchmarks/auto_cost.py                       # every case (about 35 minutes on 2 cores)
    python benchmarks/auto_cost.py --cases m3x48 c3x8    # some (see `model`)
    python benchmarks/auto_cost.py --examples 256        # on a Hessian subset of 256 examples
    python benchmarks/auto_cost.py --image --examples 500 --exact-only  # 2-D CNNs on MNIST-shaped images
    python benchmarks/auto_cost.py --products            # fit SINGLE and BATCHED: products timed alone

``--products`` times one Hessian-vector product in auto's SLQ dtype per case (``sane_cli.curvature.
hvp_operator`` as SLQ calls it: the graph recorded once, then one backward pass per product), single and as a
batch of ``hessian.probes`` vectors (per vector; one pass where ``curvature.vectorises``, else one at a time),
on MNIST-1D (MLPs, 1-D CNNs, ResNet-8) and MNIST-shaped images (2-D CNNs), and fits each path's rates (fixed,
per linear multiply-add, per convolutional multiply-add, per activation) by non-negative least squares on the
relative error, printing them beside each case's measured and fitted time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from common import best_time, mnist1d_subset
from gpu_check import hessian_config

from sane_cli import costs
from sane_cli.costs import estimate
from sane_cli.curvature import hvp_operator, vectorises
from sane_cli.examples import residual_mlp
from sane_cli.losses import loss_function
from sane_cli.methods import measure, resolve_method
from sane_cli.models import CNN, MLP, ResNet

CASES = ["m2x14", "m3x48", "m4x48", "m4x56", "m4x64", "c3x8", "c3x24", "c3x32", "t3x8", "t3x16", "r16x1", "r32x2"]


IMAGE_CASES = ["c2x8", "c3x4", "c3x8", "c3x12", "c4x8"]
PRODUCT_CASES = ["m2x14", "m3x48", "m4x64", "m3x128", "m3x256", "m8x128", "c3x8", "c3x24", "c3x32", "t3x16",
                 "s8x16"]  # fmt: skip
PRODUCT_IMAGE_CASES = ["c2x8", "c3x8", "c3x16"]
IMAGE = (1, 28, 28)  # --image: MNIST's shape, uniform random pixels and labels (the cost does not depend on them)


def model(case: str, shape: tuple[int, ...] = (40,)) -> torch.nn.Module:
    """m<depth>x<width>: an MLP; c<depth>x<channels>: a relu CNN (kernel 3, max pooling), t: the same with tanh;
    r<width>x<blocks>: sane_cli.examples' residual MLP (no layer-structured build); s<depth>x<channels>: the
    built-in ResNet. Seeded."""
    kind, (depth, width) = case[0], map(int, case[1:].split("x"))
    torch.manual_seed(0)
    if kind == "s":
        return ResNet(shape, 10, depth=depth, channels=width)
    if kind == "m":
        return MLP(math.prod(shape), 10, depth, width)
    if kind == "r":
        return residual_mlp(shape, 10, width=depth, blocks=width)
    return CNN(shape, 10, depth=depth, channels=width, activation="tanh" if kind == "t" else "relu")


def timed(net, x, y, hcfg) -> float:
    start = time.perf_counter()
    measure(net, loss_function("cross_entropy", 10), x, y, hcfg)
    return time.perf_counter() - start


def product_seconds(net, x, y, probes: int, dtype) -> tuple[float, float]:
    """Seconds of one product alone and per vector of a batch of ``probes``, each the best of 3 after one
    warm-up."""
    matvec, p = hvp_operator(net, loss_function("cross_entropy", 10), x, y, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    one, batch = torch.randn(1, p, generator=gen, dtype=dtype), torch.randn(probes, p, generator=gen, dtype=dtype)
    matvec(one)
    single = best_time(lambda: matvec(one), 3)[1]
    batched = best_time(lambda: matvec(batch), 3)[1] / probes
    return single, batched


def fit_products(n: int) -> None:
    """Time the products of every case of PRODUCT_CASES and PRODUCT_IMAGE_CASES and fit the rates."""
    from scipy.optimize import nnls

    auto = hessian_config()
    dtype = getattr(torch, auto.auto_slq_dtype)
    (x1, y1), rows = mnist1d_subset(n), {"single": [], "vectorised": [], "one at a time": []}
    torch.manual_seed(0)
    xi, yi = torch.rand(n // 8, *IMAGE), torch.randint(0, 10, (n // 8,))
    print("case     params  examples  single s (old est)   per vector s (old est)   path")
    for case, shape, x, y in [(c, (40,), x1, y1) for c in PRODUCT_CASES] + [
        (c, IMAGE, xi, yi) for c in PRODUCT_IMAGE_CASES
    ]:
        net = model(case, shape)
        prof = costs.profile(net, shape)
        single, batched = product_seconds(net, x, y, int(auto.probes), dtype)
        path = "vectorised" if vectorises(len(y), sum(prof.macs), any(prof.conv)) else "one at a time"
        feats = [1.0, len(y) * prof.linear_macs, len(y) * prof.conv_macs, len(y) * prof.outputs]
        rows["single"].append((feats, single))
        rows[path].append((feats, batched))
        old_s, old_b = costs._product(costs.SINGLE, prof, len(y)), costs._product(costs.BATCHED, prof, len(y))
        p = sum(q.numel() for q in net.parameters())
        print(f"{case:7} {p:8,} {len(y):8,}  {single:8.4f} ({old_s:7.4f})   {batched:8.4f} ({old_b:7.4f})   {path}")
    for name, data in rows.items():
        if not data:
            continue
        a = torch.tensor([f for f, _ in data], dtype=torch.float64)
        t = torch.tensor([s for _, s in data], dtype=torch.float64)
        w = (a / t[:, None]).numpy()  # relative error: each case weighs alike whatever its size
        rates, _ = nnls(w, torch.ones(len(t), dtype=torch.float64).numpy())
        fitted = a.numpy() @ rates
        worst = max(max(f / s, s / f) for f, s in zip(fitted, t.tolist(), strict=True))
        print(f"{name:14} rates ({', '.join(f'{r:.2g}' for r in rates)}), worst case off by {worst:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="default: every case of the data (CASES, IMAGE_CASES)")
    parser.add_argument("--examples", type=int, default=4000, help="the Hessian's examples (hessian.subset)")
    parser.add_argument("--image", action="store_true", help="2-D CNNs on MNIST-shaped random images")
    parser.add_argument("--exact-only", action="store_true", help="time exact only (slq: its estimate alone)")
    parser.add_argument("--products", action="store_true", help="time products alone and fit their rates")
    args = parser.parse_args()
    if args.products:
        fit_products(args.examples)
        return 0
    if args.image:
        torch.manual_seed(0)
        shape, x, y = IMAGE, torch.rand(args.examples, *IMAGE), torch.randint(0, 10, (args.examples,))
    else:
        shape, (x, y) = (40,), mnist1d_subset(args.examples)
    auto = hessian_config()
    exact = hessian_config(method="exact", layers=False)
    slq = hessian_config(method="slq", dtype=auto.auto_slq_dtype, layers=False)
    print("case    params  exact est / measured s   slq est / measured s   auto   auto's pick / faster")
    timed(model("c2x4", shape), x[:16], y[:16], exact)  # the process's first forward-mode derivative loads torch's
    for case in args.cases or (IMAGE_CASES if args.image else CASES):  # decompositions (~2 s): not a checkpoint's
        net = model(case, shape)
        p = sum(q.numel() for q in net.parameters())
        est = estimate(net, shape, len(y), auto)
        t_exact = timed(net, x, y, exact)
        t_slq = float("nan") if args.exact_only else timed(net, x, y, slq)
        pick = resolve_method(auto, net, p, n=len(y), input_shape=shape)
        spent = t_exact if pick == "exact" else t_slq
        ratio = "     -" if args.exact_only else f"{spent / min(t_exact, t_slq):6.2f}"
        times = f"{est.exact:8.1f} / {t_exact:8.1f}     {est.slq:8.1f} / {t_slq:8.1f}"
        print(f"{case:7} {p:6,}  {times}     {pick:5}  {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
