"""The optimiser of a run, built in one place, and the stability threshold that its sharpness is read against.

Stability thresholds, for the top eigenvalue lambda of the Hessian of the loss (Cohen et al. 2021, "Gradient
descent on neural networks typically occurs at the edge of stability", section 3 and appendix: the largest
curvature along which the update of a quadratic does not diverge):

    plain GD / SGD, step size eta            lambda < 2 / eta
    heavy-ball momentum beta (PyTorch SGD)   lambda < (2 + 2 beta) / eta
    Nesterov momentum beta (PyTorch SGD)     lambda < (2 + 2 beta) / ((1 + 2 beta) eta)

Weight decay wd adds wd * theta to the gradient, so the curvature the update sees is lambda + wd and each
threshold on lambda is lowered by wd.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMISERS = ("gd", "sgd")  # gd: every step on the whole training set; sgd: shuffled mini-batches


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    """torch.optim.SGD with the config's step size, momentum (heavy-ball or Nesterov) and weight decay."""
    return torch.optim.SGD(
        params,
        lr=float(optim_cfg.lr),
        momentum=float(optim_cfg.momentum),
        nesterov=bool(optim_cfg.get("nesterov", False)),
        weight_decay=float(optim_cfg.weight_decay),
    )


def full_batch(optim_cfg) -> bool:
    """Whether every step sees the whole training set (the loss descended is the full training loss)."""
    return optim_cfg.name == "gd" or optim_cfg.get("batch_size") is None


def stability_threshold(optim_cfg) -> float:
    """The largest top Hessian eigenvalue of the loss for which the optimiser's update is stable (module
    docstring): 2/lr for plain GD and SGD, (2 + 2 beta)/lr with heavy-ball momentum beta, and
    (2 + 2 beta)/((1 + 2 beta) lr) with Nesterov momentum, each less the weight decay.

    >>> from types import SimpleNamespace as C
    >>> stability_threshold(C(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0))
    20.0
    >>> round(stability_threshold(C(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)), 10)
    38.0
    >>> round(stability_threshold(C(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.0)), 10)
    15.0
    """
    lr, beta = float(optim_cfg.lr), float(optim_cfg.momentum)
    if getattr(optim_cfg, "nesterov", False) and beta > 0:
        limit = (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    else:
        limit = (2 + 2 * beta) / lr
    return limit - float(optim_cfg.weight_decay)
