"""The training losses, chosen by the top-level ``loss`` key: the mean over a batch of logits (n, C) and
integer labels (n,). The curvature is always that of the loss chosen here (sane_cli.curvature).

Adding a loss: a factory (classes -> loss function) and an entry in :data:`LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .checks import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(n_classes: int) -> LossFn:
    """Softmax cross-entropy."""
    return nn.functional.cross_entropy


def _mse(n_classes: int) -> LossFn:
    """0.5 * ||logits - onehot(y)||^2 summed over classes, averaged over the batch (its Hessian in the logits
    is the identity per example)."""

    def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = nn.functional.one_hot(y, n_classes).to(logits.dtype)
        return 0.5 * (logits - target).pow(2).sum(dim=1).mean()

    return mse


LOSSES = Registry("loss", {"cross_entropy": _cross_entropy, "mse": _mse})


def loss_function(name: str, n_classes: int) -> LossFn:
    """The mean loss ``name`` over a batch of logits (n, C) and integer labels (n,): ``cross_entropy`` or
    ``mse`` (0.5 squared error against one-hot targets, summed over classes, mean over examples)."""
    return LOSSES[name](n_classes)
