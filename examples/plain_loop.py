"""sane-run's curvature in a plain PyTorch training loop: an MLP trained by full-batch gradient descent on
MNIST-1D (the default dataset, generated offline), its Hessian measured every 100 steps into a run folder that
``sane-report`` reads.

    python examples/plain_loop.py                      # outputs/plain-loop/lr0.1 (about a minute on 2 cores)
    python examples/plain_loop.py --lr 0.5 --steps 400 # another learning rate beside it
    sane-report outputs/plain-loop                     # the two compared, as sane-run's runs are
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf
from torch import nn

from sane_cli import CurvatureProbe
from sane_cli.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="steps between curvature checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1000, help="MNIST-1D training examples")
    parser.add_argument("--out", default="outputs/plain-loop")
    args = parser.parse_args()

    data = load_data(
        OmegaConf.create(
            {
                "name": "mnist1d",
                "n_train": args.n_train,
                "n_test": 500,
                "data_seed": 42,
                "per_class": None,
                "cache_dir": None,
            }
        )
    )
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    config = {"seed": args.seed, "optim": {"name": "gd"}, "dataset": {"name": "mnist1d"}, "steps": args.steps}
    with CurvatureProbe(f"{args.out}/lr{args.lr:g}", model, (x, y), optimizer=opt, test_data=(xt, yt),
                        config=config) as probe:  # fmt: skip
        for step in range(args.steps + 1):
            if step % args.every == 0 or step == args.steps:
                c = probe.measure(step)
                print(f"step {step}: lambda_max {c.lambda_max:.4g} (2/lr = {2 / args.lr:.4g}), N_eff {c.n_eff:.4g}, "
                      f"SANE {c.sane:.4g}")  # fmt: skip
            if step % 10 == 0 or step == args.steps:
                probe.log_metrics(step, epoch=float(step))
            if step < args.steps:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    print(f"wrote {probe.dir}")


if __name__ == "__main__":
    main()
