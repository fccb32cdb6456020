"""Small models to bring to sane-run as ``model=custom`` (see the README's "Your own model"): each is a
factory that takes the data's ``input_shape`` and ``n_classes`` and keyword arguments from ``model.kwargs``,
and returns an ``nn.Module`` that maps a batch of inputs to class scores.

    sane-run model=custom model.factory=sane_cli.examples:residual_mlp 'model.kwargs={width: 32, blocks: 2}'
"""

from __future__ import annotations

import math

from torch import nn


class Residual(nn.Module):
    """x + f(x), f a two-layer perceptron of the same width."""

    def __init__(self, width: int, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), activation(), nn.Linear(width, width))
        self.act = activation()

    def forward(self, x):
        return self.act(x + self.f(x))


def residual_mlp(input_shape: tuple[int, ...], n_classes: int, width: int = 32, blocks: int = 2) -> nn.Module:
    """A residual MLP: a linear layer to ``width`` units, ``blocks`` residual blocks, a linear read-out."""
    return nn.Sequential(
        nn.Flatten(1),
        nn.Linear(math.prod(input_shape), width),
        nn.ReLU(),
        *(Residual(width) for _ in range(blocks)),
        nn.Linear(width, n_classes),
    )
