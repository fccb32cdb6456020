"""A Hessian-vector product against a gradient, by path, size and precision: what sane-run's default should be.

Models (random data of the real shapes; the timing does not depend on the values):

  mlp-78k    MLP depth 3 width 256 on MNIST-1D inputs (78,858 parameters), 4,000 examples
  resnet-270k  ResNet-20 on CIFAR-10-shaped images (269,722), 512 examples
  mlp-1m     MLP depth 3 width 975 on MNIST-1D inputs (1,001,335), 4,000 examples

For each, in float32 and float64, seconds of:

  gradient       the mean loss's gradient over the examples (a forward and a backward pass)
  kept           sane_cli.curvature.hvp_operator, one vector: reverse-over-reverse on the gradient's graph,
                 recorded once and kept (sane-run's path)
  kept x8        the same operator given 8 vectors (SLQ's probes), per vector: vectorised or one at a time, as
                 the operator chooses
  vjp            reverse-over-reverse by torch.func (vjp of grad on the kept graph: sane-run's path before 0.18)
  fresh          reverse-over-reverse recording the graph at each product (PyHessian's path)
  fwd-rev        forward-over-reverse (torch.func.jvp of torch.func.grad)
  compiled       fwd-rev under torch.compile (the first call's compilation reported apart)

each as a ratio to the gradient (the floor of a product that records no graph is about 2), and each path's
largest difference from `kept` in float64, relative to its norm (the tolerance a path must keep).

Run alone on the machine:  python benchmarks/hvp.py [--models mlp-78k,resnet-270k,mlp-1m] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import best_time
from torch.func import functional_call, grad, jvp

from sane_cli.curvature import hvp_operator
from sane_cli.models import MLP, ResNet

MODELS = {
    "mlp-78k": (lambda: MLP(40, 10, 3, 256), (40,), 4000),
    "resnet-270k": (lambda: ResNet((3, 32, 32), 10, depth=20), (3, 32, 32), 512),
    "mlp-1m": (lambda: MLP(40, 10, 3, 975), (40,), 4000),
}


def best_time_3(fn):
    return best_time(fn, 3)


def paths(model, x, y, loss_fn, dtype, compile_: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    net = model.to(dtype).eval()
    x = x.to(dtype)
    params = [p for p in net.parameters()]
    seconds, products = {}, {}
    _, seconds["gradient"] = best_time_3(lambda: torch.autograd.grad(loss_fn(net(x), y), params))

    matvec, p = hvp_operator(net, loss_fn, x, y, dtype=dtype)
    v = torch.randn(1, p, dtype=dtype, generator=torch.Generator().manual_seed(0))
    products["kept"], seconds["kept"] = best_time_3(lambda: matvec(v)[0])
    v8 = torch.randn(8, p, dtype=dtype)
    _, t8 = best_time(lambda: matvec(v8), 2)
    seconds["kept x8"] = t8 / 8

    from torch.func import vjp

    names = [n for n, _ in net.named_parameters()]
    theta = torch.cat([q.detach().reshape(-1) for q in params])

    def flat_loss(t):
        parts = dict(zip(names, [a.view_as(q) for a, q in zip(t.split([q.numel() for q in params]), params,
                                                                strict=True)], strict=True))  # fmt: skip
        return loss_fn(functional_call(net, parts, (x,)), y)

    pullback = vjp(grad(flat_loss), theta)[1]
    products["vjp"], seconds["vjp"] = best_time_3(lambda: pullback(v[0])[0])

    def fresh():
        g = torch.autograd.grad(loss_fn(net(x), y), params, create_graph=True)
        parts = v[0].split([q.numel() for q in params])
        dot = sum((gi.reshape(-1) * vi).sum() for gi, vi in zip(g, parts, strict=True))
        return torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, params)])

    products["fresh"], seconds["fresh"] = best_time_3(fresh)

    theta = {n: q.detach() for n, q in net.named_parameters()}
    tangent = dict(zip(names, [t.view_as(q) for t, q in zip(v[0].split([q.numel() for q in params]), params,
                                                                   strict=True)], strict=True))  # fmt: skip
    g = grad(lambda th: loss_fn(functional_call(net, th, (x,)), y))

    def fwd_rev():
        out = jvp(g, (theta,), (tangent,))[1]
        return torch.cat([out[n].reshape(-1) for n in names])

    products["fwd-rev"], seconds["fwd-rev"] = best_time_3(fwd_rev)
    if compile_:
        compiled = torch.compile(fwd_rev)
        start = time.perf_counter()
        compiled()
        seconds["compile (first call)"] = time.perf_counter() - start
        products["compiled"], seconds["compiled"] = best_time_3(compiled)
    return seconds, products


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    loss_fn = torch.nn.functional.cross_entropy
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        build, shape, n = MODELS[name]
        torch.manual_seed(0)
        model = build()
        x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
        p = sum(q.numel() for q in model.parameters())
        for dtype in (torch.float32, torch.float64):
            seconds, products = paths(model, x, y, loss_fn, dtype, not args.no_compile)
            base, ref = seconds["gradient"], products["kept"]
            row = ", ".join(f"{k} {s:.3g} s" + ("" if k.startswith("compile ") else f" ({s / base:.2f}x)")
                            for k, s in seconds.items())  # fmt: skip
            print(f"{name} ({p:,} parameters, {n} examples) {str(dtype)[6:]}: {row}")
            if dtype == torch.float64:
                diffs = ", ".join(f"{k} {float((t - ref).norm() / ref.norm()):.1e}" for k, t in products.items()
                                  if k != "kept")  # fmt: skip
                print(f"  relative difference from kept (float64): {diffs}")


if __name__ == "__main__":
    main()
