"""Models: a fully connected net with a configurable depth, width and activation."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}


class MLP(nn.Sequential):
    """``depth`` linear layers with ``activation`` between them and none after the last.

    Parameters are ordered layer by layer from input to output (weight, then bias), the "natural
    ordering" that the Hessian blocks follow. Input of shape (batch, in_dim), output (batch, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int, width: int, activation: str = "relu", bias: bool = True):
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < depth - 1:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def build_model(model_cfg, in_dim: int, out_dim: int) -> nn.Module:
    """The model named by ``model_cfg.name`` (only ``mlp`` for now), default PyTorch initialisation."""
    return MLP(
        in_dim,
        out_dim,
        depth=int(model_cfg.depth),
        width=int(model_cfg.width),
        activation=str(model_cfg.activation),
        bias=bool(model_cfg.bias),
    )


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
