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
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from common import mnist1d_subset
from gpu_check import hessian_config

from sane_cli.costs import estimate
from sane_cli.examples import residual_mlp
from sane_cli.losses import loss_function
from sane_cli.methods import measure, resolve_method
from sane_cli.models import CNN, MLP

CASES = ["m2x14", "m3x48", "m4x48", "m4x56", "m4x64", "c3x8", "c3x24", "c3x32", "t3x8", "t3x16", "r16x1", "r32x2"]


IMAGE_CASES = ["c2x8", "c3x4", "c3x8", "c3x12", "c4x8"]
IMAGE = (1, 28, 28)  # --image: MNIST's shape, uniform random pixels and labels (the cost does not depend on them)


def model(case: str, shape: tuple[int, ...] = (40,)) -> torch.nn.Module:
    """m<depth>x<width>: an MLP; c<depth>x<channels>: a relu CNN (kernel 3, max pooling), t: the same with tanh;
    r<width>x<blocks>: sane_cli.examples' residual MLP (no layer-structured build). Seeded."""
    kind, (depth, width) = case[0], map(int, case[1:].split("x"))
    torch.manual_seed(0)
    if kind == "m":
        return MLP(math.prod(shape), 10, depth, width)
    if kind == "r":
        return residual_mlp(shape, 10, width=depth, blocks=width)
    return CNN(shape, 10, depth=depth, channels=width, activation="tanh" if kind == "t" else "relu")


def timed(net, x, y, hcfg) -> float:
    start = time.perf_counter()
    measure(net, loss_function("cross_entropy", 10), x, y, hcfg)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="default: every case of the data (CASES, IMAGE_CASES)")
    parser.add_argument("--examples", type=int, default=4000, help="the Hessian's examples (hessian.subset)")
    parser.add_argument("--image", action="store_true", help="2-D CNNs on MNIST-shaped random images")
    parser.add_argument("--exact-only", action="store_true", help="time exact only (slq: its estimate alone)")
    args = parser.parse_args()
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
