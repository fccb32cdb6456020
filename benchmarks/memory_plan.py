"""One SLQ checkpoint of an MLP of 11 million parameters within hessian.memory_gb=16 (sane_cli.budget): the plan it
chose, the peak resident memory of the process above what the model, the data and the Hessian-vector-product
operator took before it, and the seconds.

Model: MLP depth 3 width 3,300 on MNIST-1D (11,036,310 parameters), the first 64 training examples (the
memory of the Lanczos vectors depends on P alone), float64, hessian=slq with 4 probes (the plan's memory is that
of one probe at a time whatever their number; fewer probes take less time). Without the budget the same
checkpoint would keep 300 steps x 4 probes x P float64 numbers (106 GB).

Run:  python benchmarks/memory_plan.py [--memory-gb 16] [--width 3300]
"""

from __future__ import annotations

import argparse
import logging
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-gb", type=float, default=16.0)
    parser.add_argument("--width", type=int, default=3300)
    parser.add_argument("--probes", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from common import mnist1d_subset
    from hydra import compose, initialize_config_module

    from sane_cli import budget
    from sane_cli.iterative import hvp_operator
    from sane_cli.losses import loss_function
    from sane_cli.methods import _slq_estimates
    from sane_cli.models import MLP

    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        cfg = compose("config", overrides=["hessian=slq", f"hessian.memory_gb={args.memory_gb}",
                                           f"hessian.probes={args.probes}"])  # fmt: skip
    x, y = mnist1d_subset(64)
    torch.manual_seed(0)
    model = MLP(40, 10, 3, args.width).double()
    loss_fn = loss_function("cross_entropy", 10)
    matvec, p = hvp_operator(model, loss_fn, x.double(), y, dtype=torch.float64)
    matvec(torch.zeros(1, p, dtype=torch.float64))  # the operator's first product: its graphs and workspace
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = budget.plan(cfg.hessian, p, torch.float64, int(args.memory_gb * 2**30))
    start = time.perf_counter()
    _, row, _ = _slq_estimates(matvec, p, cfg.hessian, torch.float64, torch.device("cpu"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"{p:,} parameters, hessian.memory_gb={args.memory_gb:g}: plan {', '.join(plan.changes) or 'as configured'}"
        f" ({plan.need / 2**30:.1f} GiB counted)"
    )
    print(
        f"peak resident memory {peak / 2**30:.1f} GiB, {(peak - before) / 2**30:.1f} GiB above the model, data and"
        f" operator ({before / 2**30:.1f} GiB); {seconds:.0f} s"
    )
    print(
        f"lambda_max {row['lambda_max']:.6g} (converged {row['converged']}), trace {row['trace']:.6g} +- "
        f"{row['trace_se']:.3g}, N_eff {row['n_eff']:.6g} +- {row['n_eff_se']:.3g} (bound {row['n_eff_bound']:.3g})"
    )


if __name__ == "__main__":
    main()
