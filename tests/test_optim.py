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


def test_adam_threshold_is_that_of_its_preconditioned_moving_average_heavy_ball():
    """Adam with its preconditioner P held fixed is heavy ball on an exponential moving average of
    gradients, stepping by lr P^-1 m: on the quadratic 0.5 theta^T H theta it is stable exactly while
    lambda_max(P^-1 H) < (2 + 2 beta1) / ((1 - beta1) lr) (38/lr at beta1 = 0.9)."""
    cfg = OmegaConf.create(dict(name="adam", lr=0.01, beta1=0.9, weight_decay=0.0))
    threshold = stability_threshold(cfg)
    assert threshold == pytest.approx(38 / 0.01, rel=1e-12)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    h, p = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    sharpness = float(torch.linalg.eigvals(h / p[:, None]).real.max())  # lambda_max(P^-1 H)

    def final_size(scale: float) -> float:
        theta, m = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        for _ in range(500):
            m = 0.9 * m + 0.1 * (scale * h @ theta)
            theta = theta - 0.01 * m / p
        return float(theta.norm())

    assert final_size(0.98 * threshold / sharpness) < 1.0
    assert final_size(1.02 * threshold / sharpness) > 1e3


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_preconditioner_is_the_one_torch_adam_divides_its_moving_average_by(weight_decay):
    """theta_t - theta_{t+1} = lr m_{t+1} / P_{t+1}, m the raw moving average (exp_avg), at early steps
    (where the bias corrections matter) and later ones."""
    from sane_cli.optim import preconditioner

    gen = torch.Generator().manual_seed(1)
    theta = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    cfg = OmegaConf.create(dict(name="adam", lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=weight_decay))
    opt = build_optimizer([theta], cfg)
    assert preconditioner(opt, cfg) is None  # before the first step
    target = torch.randn(5, generator=gen, dtype=torch.float64)
    for step in range(1, 30):
        before = theta.detach().clone()
        opt.zero_grad()
        (((theta - target) ** 4).sum()).backward()
        opt.step()
        (p,) = preconditioner(opt, cfg)
        m = opt.state[theta]["exp_avg"]
        torch.testing.assert_close(before - theta.detach(), 0.05 * m / p, rtol=1e-12, atol=1e-15, msg=f"step {step}")
