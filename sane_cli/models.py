"""Models, chosen by ``model.name``: a fully connected net (``mlp``), a small convolutional net (``cnn``), the
CIFAR residual net (``resnet``; ResNet-20 at depth 20) and the user's own (``custom``).

Each is built from its config group (conf/model/<name>.yaml) and the data's input shape (without the batch
axis: (features,) for MNIST-1D, (channels, height, width) for image sets) by :func:`build_model`.

Adding a model: its class here (with a class attribute ``layered``: True when its parameters are a stack of
layers in input-to-output order that sane_cli.curvature has a layer-structured Hessian build for, which the
block methods need too; a model without one is measured through Hessian-vector products), a builder and a
``check`` of its config keys, an entry in :data:`MODELS`, its ``conf/model/<name>.yaml`` (every key
commented), and its tests. Nothing else changes: the config checks, the curvature methods and the report ask
the registry.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import nn

from . import checks, distributed
from .errors import UsageError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}


def activation_derivatives(act: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma'(z) and sigma''(z) of an elementwise activation module at z, by forward-mode derivatives (what the
    layer-structured Hessian builds need of each activation).

    >>> d1, d2 = activation_derivatives(nn.Tanh(), torch.tensor([0.0, 1.0], dtype=torch.float64))
    >>> torch.allclose(d1, 1 - torch.tanh(torch.tensor([0.0, 1.0], dtype=torch.float64)) ** 2)
    True
    """
    ones = torch.ones_like(z)

    def first(u: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(act, (u,), (ones,))[1]

    return torch.func.jvp(first, (z,), (ones,))


class MLP(nn.Sequential):
    """``depth`` linear layers with ``activation`` between them and none after the last.

    Parameters are ordered layer by layer from input to output (weight, then bias), the "natural
    ordering" that the Hessian blocks follow. Input of shape (batch, in_dim), output (batch, out_dim).
    """

    layered = True  # linear layers in order: the layer-structured Hessian (sane_cli.curvature) and the block methods

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


class CNN(nn.Sequential):
    """``depth`` convolutional layers of ``channels`` filters (``kernel`` wide, padded to keep the size), each
    followed by ``activation`` and, while the signal is at least 2 long, a 2-wide ``pooling`` (max, avg or
    none); then one linear layer from the flattened features to the classes. 1-D convolutions for inputs of
    shape (length,) or (channels, length), 2-D for (channels, height, width).

    >>> net = CNN((40,), 10, depth=2, channels=4, kernel=3)
    >>> net(torch.zeros(5, 40)).shape, sum(p.numel() for p in net.parameters())
    (torch.Size([5, 10]), 478)
    """

    layered = True  # convolutions, then a linear layer: sane_cli.conv_hessian builds its Hessian layer by layer

    def __init__(
        self,
        input_shape: tuple[int, ...],
        out_dim: int,
        depth: int,
        channels: int,
        kernel: int = 3,
        pooling: str = "max",
        activation: str = "relu",
        bias: bool = True,
    ):
        shape = (1, *input_shape) if len(input_shape) == 1 else tuple(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"a CNN takes inputs of 1 or 2 spatial dimensions, not shape {tuple(input_shape)}")
        if kernel % 2 == 0:
            raise ValueError(f"a CNN's kernel must be odd (its padding keeps the size only then), not {kernel}")
        conv, pools = (nn.Conv1d, POOLS_1D) if len(shape) == 2 else (nn.Conv2d, POOLS_2D)
        layers: list[nn.Module] = [nn.Unflatten(1, shape)]
        c, size = shape[0], list(shape[1:])
        for _ in range(depth):
            layers += [conv(c, channels, kernel, padding=kernel // 2, bias=bias), ACTIVATIONS[activation]()]
            if pooling != "none" and min(size) >= 2:
                layers.append(pools[pooling](2))
                size = [s // 2 for s in size]
            c = channels
        layers += [nn.Flatten(1), nn.Linear(c * math.prod(size), out_dim, bias=bias)]
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


class ResNet(nn.Module):
    """The CIFAR residual net of He et al. (2016, section 4.2): a 3x3 convolution of ``channels`` filters, three
    stages of (depth - 2) / 6 basic blocks (two 3x3 convolutions, each with batch normalisation, and a shortcut
    around them) of ``channels``, 2x and 4x as many filters, the second and third stage halving the resolution,
    then global average pooling and a linear layer to the classes. Depth 20 (ResNet-20) with 16 channels has
    269,722 parameters for 3-channel images and 10 classes.

    Shortcuts are identities, subsampled and zero-padded in channels where a stage begins (the paper's option
    A): every parameter is in a convolution, a normalisation or the last layer. Convolutions are initialised as
    He et al. do (Kaiming normal), the rest as PyTorch does. 1-D convolutions for inputs of shape (length,) or
    (channels, length), 2-D for (channels, height, width).

    Batch normalisation normalises by the batch's statistics in training (every rank's, in a data-parallel job)
    and by the running ones in eval mode, the mode in which sane-run measures every Hessian.

    >>> net = ResNet((3, 32, 32), 10, depth=20)
    >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
    (torch.Size([2, 10]), 269722)
    """

    layered = False  # residual: its Hessian is built from Hessian-vector products (no block methods)

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, depth: int = 20, channels: int = 16,
                 batchnorm: bool = True, activation: str = "relu"):  # fmt: skip
        shape = (1, *input_shape) if len(input_shape) == 1 else tuple(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"a ResNet takes inputs of 1 or 2 spatial dimensions, not shape {tuple(input_shape)}")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 (8, 14, 20, 32, ...), not {depth}")
        super().__init__()
        self.shape, spatial = shape, len(shape) - 1
        conv = nn.Conv1d if spatial == 1 else nn.Conv2d
        norm = (BatchNorm1d if spatial == 1 else BatchNorm2d) if batchnorm else (lambda c: nn.Identity())
        self.stem = nn.Sequential(conv(shape[0], channels, 3, padding=1, bias=False), norm(channels),
                                  ACTIVATIONS[activation]())  # fmt: skip
        blocks, c = [], channels
        for stage in range(3):
            for i in range((depth - 2) // 6):
                out, stride = channels * 2**stage, 2 if stage > 0 and i == 0 else 1
                blocks.append(_Block(conv, norm, activation, c, out, stride, spatial))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.reshape(len(x), *self.shape)))
        return self.head(h.flatten(2).mean(2))


class _Block(nn.Module):
    """Two convolutions with normalisation, the activation after the first and after the sum with the
    shortcut."""

    def __init__(self, conv, norm, activation: str, c_in: int, c_out: int, stride: int, spatial: int):
        super().__init__()
        self.conv1, self.norm1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm(c_out)
        self.conv2, self.norm2 = conv(c_out, c_out, 3, padding=1, bias=False), norm(c_out)
        self.act1, self.act2 = ACTIVATIONS[activation](), ACTIVATIONS[activation]()
        self.stride, self.extra, self.spatial = stride, c_out - c_in, spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.stride > 1 or self.extra:  # option A: subsample, pad the new channels with zeros
            x = x[(slice(None), slice(None), *[slice(None, None, self.stride)] * self.spatial)]
            x = nn.functional.pad(x, (0, 0) * self.spatial + (self.extra // 2, self.extra - self.extra // 2))
        return self.act2(h + x)


class _SyncedNorm:
    """Batch normalisation whose training-mode statistics are the whole batch's in a data-parallel job (summed
    over the ranks, the gradient too), so that N ranks train as one process does; otherwise PyTorch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = distributed.current()
        if not self.training or world.size == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() // x.shape[1]])  # values a channel: 0 where this rank holds none
        sums = world.sum_differentiable(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c, n = x.shape[1], sums[-1]
        mean, var = sums[:c] / n, sums[c : 2 * c] / n - (sums[:c] / n) ** 2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        view = (1, c) + (1,) * (x.dim() - 2)
        out = (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return out * self.weight.view(view) + self.bias.view(view) if self.affine else out


class BatchNorm1d(_SyncedNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d, synchronised in a data-parallel job."""


class BatchNorm2d(_SyncedNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d, synchronised in a data-parallel job."""


POOLS_1D = {"max": nn.MaxPool1d, "avg": nn.AvgPool1d}
POOLS_2D = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
POOLINGS = ("max", "avg", "none")


def _mlp(cfg, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    width = 0 if cfg.width is None else int(cfg.width)  # null: depth 1, a linear model (no hidden layer)
    return MLP(math.prod(input_shape), out_dim, depth=int(cfg.depth), width=width,
               activation=str(cfg.activation), bias=bool(cfg.bias))  # fmt: skip


def _cnn(cfg, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return CNN(input_shape, out_dim, depth=int(cfg.depth), channels=int(cfg.channels), kernel=int(cfg.kernel),
               pooling=str(cfg.pooling), activation=str(cfg.activation), bias=bool(cfg.bias))  # fmt: skip


def _resnet(cfg, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return ResNet(input_shape, out_dim, depth=int(cfg.depth), channels=int(cfg.channels),
                  batchnorm=bool(cfg.batchnorm), activation=str(cfg.activation))  # fmt: skip


def _check_resnet(cfg) -> None:
    """Depth 6n + 2 (three stages of n blocks of two layers, the first and the last layer), a channel count,
    batch normalisation on or off."""
    depth = cfg.model.depth
    if depth < 8 or (depth - 2) % 6:
        checks.fail("depth", depth, "model=resnet takes depth 6n + 2: 8, 14, 20 (ResNet-20), 32, 44, 56, 110")
    checks.number(cfg, "model.channels", minimum=1, integer=True)
    checks.flag(cfg, "model.batchnorm")


def _check_mlp(cfg) -> None:
    """The width of the hidden layers (depth 1, a linear model, has none: ``validate`` records it as null)."""
    checks.number(cfg, "model.width", minimum=1, integer=True, optional=cfg.model.depth == 1)


def _check_cnn(cfg) -> None:
    checks.number(cfg, "model.channels", minimum=1, integer=True)
    checks.number(cfg, "model.kernel", minimum=1, integer=True)
    if cfg.model.kernel % 2 == 0:
        checks.fail("model.kernel", cfg.model.kernel, "must be odd (the padding keeps the size only for odd widths)")
    checks.choice(cfg, "model.pooling", POOLINGS)


def _custom(cfg, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """``model.factory`` called with the data's sizes (where its signature takes them) and ``model.kwargs``.

    Raises:
        UsageError: the factory fails, returns no module, or one without trainable parameters.
    """
    import inspect

    from omegaconf import OmegaConf

    factory = _factory(str(cfg.factory))
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if cfg.get("kwargs") is not None else {}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # a builtin without a signature
        params, takes_all = {}, False
    sizes = {k: v for k, v in (("input_shape", tuple(input_shape)), ("n_classes", out_dim)) if takes_all or k in params}
    try:
        module = factory(**sizes, **kwargs)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of the user's code, in one line
        raise UsageError(
            f"model.factory={cfg.factory} failed with model.kwargs={kwargs}: {type(e).__name__}: {e}".splitlines()[0]
        ) from e
    if not isinstance(module, nn.Module):
        raise UsageError(f"model.factory={cfg.factory} returned {type(module).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in module.parameters()):
        raise UsageError(f"model.factory={cfg.factory} returned a module without trainable parameters")
    return module


def _factory(path: str) -> Callable[..., nn.Module]:
    """The callable that ``package.module:attribute`` names.

    Raises:
        UsageError: the path is malformed, its module does not import, or it names nothing callable.
    """
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"model.factory={path!r} is invalid: write it as package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or any error the module raises on import
        raise UsageError(
            f"model.factory={path}: cannot import {module_name} ({type(e).__name__}: {e}); is it installed, or on "
            "PYTHONPATH?".splitlines()[0]
        ) from e
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise UsageError(f"model.factory={path}: {module_name} has no callable {attribute}")
    return target


def _check_custom(cfg) -> None:
    """The factory names an importable callable, and kwargs is a mapping."""
    if cfg.model.get("factory") is None or not isinstance(cfg.model.factory, str):
        checks.fail("model.factory", cfg.model.get("factory"), "must be package.module:callable (model=custom)")
    _factory(cfg.model.factory)
    if cfg.model.get("kwargs") is not None and not OmegaConf.is_dict(cfg.model.kwargs):
        checks.fail("model.kwargs", cfg.model.kwargs, "must be a mapping of keyword arguments, e.g. {width: 32}")


@dataclass(frozen=True)
class ModelSpec:
    """A model option: its class, how it is built and checked, and the keys that describe it in a log line."""

    cls: type[nn.Module]
    build: Callable[..., nn.Module]  # (model config, input shape, classes) -> module
    check: Callable[..., None]  # (whole run config) -> None; raises UsageError on a bad key of its own
    keys: tuple[str, ...]  # the config keys that describe it (describe())
    # its layer-structured exact Hessian build (sane_cli.curvature) and that build's counted cost in seconds
    # (sane_cli.costs, for auto's choice); None: the Hessian is built from Hessian-vector products, at their cost
    hessian_build: Callable[..., None] | None = None
    build_cost: Callable[..., float] | None = None


def _later(module: str, name: str) -> Callable:
    """``sane_cli.<module>.<name>``, imported when first called (the modules that hold the builds and their
    costs import this one)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"sane_cli.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


MODELS = checks.Registry("model.name", {
    "mlp": ModelSpec(MLP, _mlp, _check_mlp, ("depth", "width"), hessian_build=_later("curvature", "mlp_build"),
                     build_cost=_later("costs", "mlp_build_seconds")),
    "cnn": ModelSpec(CNN, _cnn, _check_cnn, ("depth", "channels", "kernel", "pooling"),
                     hessian_build=_later("curvature", "cnn_build"), build_cost=_later("costs", "cnn_build_seconds")),
    "resnet": ModelSpec(ResNet, _resnet, _check_resnet, ("depth", "channels", "batchnorm")),
    "custom": ModelSpec(nn.Module, _custom, _check_custom, ("factory",)),
})  # fmt: skip
BUILT_IN = ("mlp", "cnn", "resnet")  # the models with depth and activation keys


def spec_of(model: nn.Module) -> ModelSpec:
    """The registry entry of a built model: that of the first built-in class it is an instance of (a subclass
    keeps its parent's structure), else custom's."""
    return next((spec for name, spec in MODELS.items() if name in BUILT_IN and isinstance(model, spec.cls)),
                MODELS["custom"])  # fmt: skip


def is_layered(model: nn.Module) -> bool:
    """Whether ``model`` is a stack of layers with a layer-structured Hessian build (its class says so:
    ``layered``)."""
    return bool(getattr(type(model), "layered", False))


def check_config(cfg) -> None:
    """The ``model`` group's keys of a run config: the name, depth and activation, then the option's own."""
    checks.choice(cfg, "model.name", MODELS)
    if cfg.model.name in BUILT_IN:
        checks.number(cfg, "model.depth", minimum=1, integer=True)
        checks.choice(cfg, "model.activation", ACTIVATIONS)
    if "bias" in cfg.model:
        checks.flag(cfg, "model.bias")
    MODELS[cfg.model.name].check(cfg)


def build_model(model_cfg, input_shape: tuple[int, ...] | int, out_dim: int) -> nn.Module:
    """The model named by ``model_cfg.name`` for inputs of ``input_shape`` (an int: a flat vector), default
    PyTorch initialisation."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    return MODELS[str(model_cfg.name)].build(model_cfg, shape, out_dim)


def sized_model(model_cfg, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """The model for the checks that need its sizes alone, its outputs checked (:func:`check_outputs`): built on
    the meta device (nothing allocated, no arithmetic), or on the CPU where the user's factory or forward cannot
    run there (``.item()``, code that depends on values)."""
    try:
        with torch.device("meta"):
            model = build_model(model_cfg, input_shape, out_dim)
        check_outputs(model, input_shape, out_dim, model_cfg)
        return model
    except Exception:  # noqa: BLE001 - whatever the user's code raises on the meta device: tried on the CPU
        if str(model_cfg.name) != "custom":
            raise
    model = build_model(model_cfg, input_shape, out_dim)
    check_outputs(model, input_shape, out_dim, model_cfg)
    return model


def check_outputs(model: nn.Module, input_shape: tuple[int, ...] | int, out_dim: int, model_cfg) -> None:
    """A batch of two examples through ``model`` (eval mode, on its device: no state changes) gives one output per
    class, (2, out_dim), as the losses need.

    Raises:
        UsageError: the forward pass fails, or its output has another shape.
    """
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    name = f"model.factory={model_cfg.factory}" if str(model_cfg.name) == "custom" else f"model={model_cfg.name}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device, dtype=dtype))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of the user's code, in one line
        if device.type == "meta":
            raise
        raise UsageError(f"{name}: the model fails on a batch of inputs of shape {shape}: {type(e).__name__}: "
                         f"{e}".splitlines()[0]) from e  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, out_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"{name} gives outputs of shape {got} for a batch of 2, not (2, {out_dim}): one score per class of the "
            "dataset"
        )


def describe(model_cfg) -> str:
    """The model in a few words, e.g. ``mlp depth 3 width 24``.

    >>> describe({"name": "cnn", "depth": 2, "channels": 8, "kernel": 3, "pooling": "max"})
    'cnn depth 2 channels 8 kernel 3 pooling max'
    """
    keys = MODELS[model_cfg["name"]].keys
    return " ".join([str(model_cfg["name"]), *(f"{k} {model_cfg[k]}" for k in keys)])


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode while the block runs, then each of its modules back in its own mode (a frozen
    batch normalisation in a training model stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
