"""Per-layer curvature (hessian.layers): what measuring every layer's diagonal block adds to an exact checkpoint.

For MLPs and CNNs on MNIST-1D (the Hessian of the mean loss over the whole 4,000-example training set, float64,
as sane-run takes it by default), measured side by side in one process:

  net only            sane_cli.methods.measure with hessian.layers=false: the exact checkpoint of the net
  net + layers        the same with hessian.layers=true (the default `auto` for exact methods): the blocks are
                      sliced from the matrix already built, and each gets its eigenvalues
  added               the difference, and the ratio (net + layers) / (net only), the times the best of --repeats
  per-layer baseline  torch.func.hessian of the loss in each layer's parameters alone (the others held fixed),
                      then eigvalsh: what one writes first to get the layer blocks without sane-run; run on
                      256 examples (--baseline-examples) and scaled to the examples (its cost is linear in them);
                      base/ours: its time over ours for the whole checkpoint, the net's spectrum included

Every layer's values are checked against the baseline's blocks on the baseline's examples.
Cases are DEPTHxWIDTH for an MLP and cDEPTHxCHANNELS for a CNN (kernel 3, max pooling).

Run:  python benchmarks/layers.py [--cases 3x24 c3x8] [--examples 4000] [--repeats 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import best_time, mnist1d_subset
from exact_hessian import model_of
from omegaconf import OmegaConf

from sane_cli.curvature import parameter_groups
from sane_cli.losses import loss_function
from sane_cli.methods import measure

HCFG = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "hessian" / "exact.yaml")


def layer_blocks_baseline(model, loss_fn, x, y) -> list[np.ndarray]:
    """Each layer's block by torch.func.hessian over its parameters alone, and its eigenvalues (descending)."""
    net = model.double()
    params = dict(net.named_parameters())
    x = x.double()
    out = []
    for name, _, _ in parameter_groups(net):
        own = {k: v.detach() for k, v in params.items() if k.rsplit(".", 1)[0] == name}
        rest = {k: v.detach() for k, v in params.items() if k not in own}
        keys, shapes, sizes = list(own), [v.shape for v in own.values()], [v.numel() for v in own.values()]
        theta = torch.cat([v.reshape(-1) for v in own.values()])

        def f(t, keys=keys, shapes=shapes, sizes=sizes, rest=rest):
            mine = {k: v.view(s) for k, v, s in zip(keys, t.split(sizes), shapes, strict=True)}
            return loss_fn(torch.func.functional_call(net, {**rest, **mine}, (x,)), y)

        out.append(torch.linalg.eigvalsh(torch.func.hessian(f)(theta)).flip(0).numpy())
    return out


def run_case(case: str, x, y, loss_fn, repeats: int, baseline: int) -> str:
    model = model_of(case).double()
    p = sum(q.numel() for q in model.parameters())
    off, on = HCFG.copy(), HCFG.copy()
    off.layers, on.layers = False, True
    _, t_off = best_time(lambda: measure(model, loss_fn, x, y, off), repeats)
    result, t_on = best_time(lambda: measure(model, loss_fn, x, y, on), repeats)
    xb, yb = x[:baseline], y[:baseline]
    blocks, t_base = best_time(lambda: layer_blocks_baseline(model_of(case), loss_fn, xb, yb), 1)
    check = measure(model, loss_fn, xb, yb, on)
    for row, values in zip(check.layers, blocks, strict=True):
        assert np.isclose(row["lambda_max"], values[0], rtol=1e-8) and np.isclose(row["trace"], values.sum(), rtol=1e-8)
    t_base *= len(y) / baseline
    added = t_on - t_off
    sizes = "+".join(str(r["params"]) for r in result.layers)
    return (
        f"{case:>6} {p:>6} {sizes:>22} | {t_off:>7.2f}s {t_on:>7.2f}s {added:>6.2f}s {t_on / t_off:>6.2f} | "
        f"{t_base:>8.1f}s {t_base / t_on:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["3x24", "4x32", "8x24", "c3x8", "c3x16"])
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--baseline-examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = mnist1d_subset(args.examples)
    loss_fn = loss_function("cross_entropy", 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.examples} examples, float64")
    header = (f"{'model':>6} {'params':>6} {'layers':>22} | {'net only':>8} {'+layers':>8} {'added':>7} {'ratio':>6} | "
              f"{'baseline':>9} {'base/ours':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    run_case("2x8", x[:64], y[:64], loss_fn, 1, 64)  # warm-up
    for case in args.cases:
        print(run_case(case, x, y, loss_fn, args.repeats, args.baseline_examples), flush=True)
    print(f"(baseline: torch.func.hessian per layer on {args.baseline_examples} examples, time x "
          f"{args.examples} / {args.baseline_examples}; checked against ours on those examples)")  # fmt: skip


if __name__ == "__main__":
    main()
