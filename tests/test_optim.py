"""The stability thresholds of sane_cli.optim against torch.optim.SGD itself on quadratics: just below the
threshold the iterates shrink, just above they blow up."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from sane_cli.optim import build_optimizer, stability_threshold


def final_size(curvature: float, optim_cfg, steps: int = 2000) -> float:
    """|theta| after ``steps`` of the configured optimiser on the loss 0.5 * curvature * theta^2, from 1."""
    theta = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    opt = build_optimizer([theta], optim_cfg)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * theta**2).backward()
        opt.step()
    return abs(float(theta.detach()))


@pytest.mark.parametrize(
    "momentum,nesterov,weight_decay",
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.5, True, 0.0), (0.9, True, 0.0), (0.0, False, 0.3), (0.9, False, 0.3)],
)
def test_threshold_is_where_the_optimiser_turns_unstable(momentum, nesterov, weight_decay):
    cfg = OmegaConf.create(dict(name="gd", lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
    threshold = stability_threshold(cfg)
    assert final_size(0.98 * threshold, cfg) < 1.0
    assert final_size(1.02 * threshold, cfg) > 1e3
