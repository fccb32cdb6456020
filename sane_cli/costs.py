"""What one curvature checkpoint costs, estimated before it runs: ``auto``'s choice between exact and SLQ.

The work of each method is counted from the model's shapes (one example through it on the meta device: each
layer's multiply-adds, whether it is a convolution, and the elements every module outputs), the number of
examples n and the ``hessian`` config, and priced in seconds at fixed rates fitted on a 2-core laptop CPU
with MNIST-1D's MLPs and 1-D CNNs (``benchmarks/auto_cost.py`` measures both methods beside the estimates).
The rates being fixed, a config gets the same choice on every machine; a faster or slower CPU scales both
methods alike.

* SLQ: its top eigenpairs by Lanczos, up to ``max_iter`` single Hessian-vector products, then ``steps``
  products of ``probes`` vectors each (in one vectorised pass where ``curvature.vectorises``: a small product
  without convolutions; else one vector at a time, as ``curvature.hvp_operator`` takes them), and the
  reorthogonalisation of the probes' Lanczos vectors (with ``reorth=full`` probes x steps^2 x P multiply-adds,
  which dominate when n is small). A product's time is a fixed cost plus the model's linear and convolutional
  multiply-adds and its activations, each at its own rate: the activations (read and written several times)
  cost more than the multiply-adds of a small net.
* exact: the build, then ``eigvalsh`` (P^3). The builds, by model (sane_cli.curvature, sane_cli.conv_hessian):
  the MLP's one product over examples per block (n P_j P_m each); the CNN with a piecewise-linear activation
  (relu, linear: the Gauss-Newton split) its Gram matrix of the convolutions' Jacobians (C n P_conv^2 / 2, C
  the classes, about the rank of the loss's Hessian in the logits), the linear layer's rows (n P_top P), and
  the directions of the layers three or more below the top carried up (P_m directions, each the multiply-adds
  of the layers above for every example); a CNN with a curved activation every parameter's direction carried
  up and back; any other model P Hessian-vector products, 8 at a time, in float64.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .conv_hessian import layers_of
from .curvature import layer_sizes, vectorises
from .models import activation_derivatives, eval_mode, n_parameters, spec_of

# Seconds per unit, 2 cores (benchmarks/auto_cost.py; products: --products). Hessian-vector products in float32
# (auto's SLQ dtype), fixed, per linear and per convolutional multiply-add, per activation:
# one product, and each vector of a batch taken one at a time; the fixed cost from whole checkpoints (a Lanczos
# step's own work beside its product: a product alone measured 0.46 ms)
SINGLE = (1.0e-3, 2.2e-11, 1.2e-10, 2.2e-9)
BATCHED = (4.2e-4, 2.5e-11, 4.3e-10, 3.0e-9)  # each vector of a batch in one vectorised pass (small, no conv)
REORTH = 8e-10  # per multiply-add of SLQ's reorthogonalisation (probes x steps^2 x P in all, full), float32
EIGVALSH = 2.8e-11  # per P^3, float64
GEMM = 1 / 30e9  # per multiply-add of the builds' products over examples, float64
DIRECTIONS = 1 / 4.6e9  # per multiply-add of the CNN build's directions carried through the layers above, float64
CURVED = 1 / 2.4e9  # per multiply-add of each direction carried up and back (a curved activation: no split)
FIXED = 0.5  # per build: the forward pass, the per-example loss Hessians, the layers' bookkeeping
# a 2-D CNN's build measured 1.3-3.9x its count at the rates above (fitted on 1-D ones): unfolding images and
# the 9 kernel offsets of each position cost more per multiply-add (benchmarks/auto_cost.py --image)
CONV2D = 2.3
# auto keeps exact while it costs at most this many times SLQ: exact has no error, SLQ's estimates a few percent
# (their standard errors and the quadrature's bias), and exact brings every layer's block at no extra cost
EXACT_PREMIUM = 2.0


@dataclass(frozen=True)
class Profile:
    """One example through a model: each linear or convolutional layer's multiply-adds and whether it is a
    convolution, and the elements all modules output (what a Hessian-vector product reads and writes)."""

    macs: tuple[int, ...]
    conv: tuple[bool, ...]
    outputs: int
    logits: int  # the model's outputs per example (the classes)

    @property
    def linear_macs(self) -> int:
        return sum(m for m, c in zip(self.macs, self.conv, strict=True) if not c)

    @property
    def conv_macs(self) -> int:
        return sum(m for m, c in zip(self.macs, self.conv, strict=True) if c)


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """Count one example of ``input_shape`` through ``model`` with its parameters and buffers on the meta device
    (no copy of the model, no memory, no arithmetic)."""
    with _on_meta(model), eval_mode(model):  # as every Hessian is taken: batch normalisation by its statistics
        return profile_example(model, torch.zeros(1, *input_shape, device="meta"))


def profile_example(model: nn.Module, x1: torch.Tensor) -> Profile:
    """Count the example ``x1`` (a batch of one) through ``model`` where they are (:func:`profile` on the meta
    device; ``curvature.hvp_operator`` on the real one, which any model runs on)."""
    macs, conv, outputs = [], [], [0]

    def count(module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel()
            if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                macs.append(output.numel() * module.weight[0].numel())
                conv.append(not isinstance(module, nn.Linear))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            logits = model(x1).numel()
    finally:
        for h in handles:
            h.remove()
    return Profile(tuple(macs), tuple(conv), outputs[0], logits)


@contextlib.contextmanager
def _on_meta(model: nn.Module):
    """Each module's parameters and buffers swapped for meta tensors of their shapes while the block runs, and
    put back after. By hand rather than by torch.func.functional_call, which leaves a module that the model uses
    twice on the meta device (torch 2.14)."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    metas: dict[int, torch.Tensor] = {}  # one meta tensor for a tensor that two modules share

    def meta(t):
        return None if t is None else metas.setdefault(id(t), torch.empty_like(t, device="meta"))

    try:
        for m, params, buffers in saved:
            m._parameters.update({k: meta(v) for k, v in params.items()})
            m._buffers.update({k: meta(v) for k, v in buffers.items()})
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)


def _product(rates: tuple[float, ...], prof: Profile, n: int) -> float:
    fixed, linear, conv, act = rates
    return fixed + n * (linear * prof.linear_macs + conv * prof.conv_macs + act * prof.outputs)


def _per_vector(prof: Profile, n: int) -> float:
    """Seconds of each vector of a batch of products, as ``curvature.hvp_operator`` takes them."""
    vectorised = vectorises(n, prof.linear_macs + prof.conv_macs, any(prof.conv))
    return _product(BATCHED if vectorised else SINGLE, prof, n)


def slq_seconds(prof: Profile, n: int, p: int, hcfg, dtype: str | None = None) -> float:
    """SLQ in ``dtype`` (by default ``hcfg.auto_slq_dtype``, as auto runs it) on P parameters: up to
    ``max_iter`` single products for the top eigenpairs, then ``steps`` batches of ``probes``, and the
    reorthogonalisation of each probe's Lanczos vectors (full: against every earlier one, twice; selective:
    against the ``topk`` deflated ones); float64 about twice float32's time."""
    probes, steps = int(hcfg.probes), int(hcfg.steps)
    seconds = int(hcfg.max_iter) * _product(SINGLE, prof, n) + steps * probes * _per_vector(prof, n)
    against = {"full": steps, "selective": 2 * int(hcfg.topk)}.get(hcfg.reorth, 0)
    seconds += REORTH * probes * steps * against * p
    return seconds * (2 if (dtype or hcfg.auto_slq_dtype) == "float64" else 1)


def _piecewise_linear(model: nn.Module) -> bool:
    """Every activation of the model has no second derivative (relu, the identity): the CNN build's
    Gauss-Newton split applies."""
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    acts = [layer.act for layer in layers_of(model) if layer.act is not None]
    return all(not bool(activation_derivatives(act, z)[1].any()) for act in acts)


def build_seconds(model: nn.Module, prof: Profile, n: int, p: int) -> float:
    """The exact Hessian's build for ``model`` of P parameters (see the module docstring), float64: the count of
    its layer-structured build where its registry entry has one (``build_cost``), else P Hessian-vector
    products."""
    cost = spec_of(model).build_cost
    if cost is not None:
        return cost(model, prof, n, p)
    return 2 * p * _per_vector(prof, n)  # P products in float64, about twice float32's time


def mlp_build_seconds(model: nn.Module, prof: Profile, n: int, p: int) -> float:
    """The MLP's build: one product over the examples per block (n P_j P_m each)."""
    sizes = layer_sizes(model)
    pairs = sum(sizes[j] * sizes[m] for m in range(len(sizes)) for j in range(m, len(sizes)))
    return FIXED + GEMM * n * pairs


def cnn_build_seconds(model: nn.Module, prof: Profile, n: int, p: int) -> float:
    """The CNN's build: the Gauss-Newton split where its activations are piecewise linear, else every
    parameter's direction carried up and back."""
    sizes, top = layer_sizes(model), len(prof.macs) - 1
    above = [sum(prof.macs[m + 1 :]) for m in range(top + 1)]
    scale = CONV2D if any(isinstance(mod, nn.Conv2d) for mod in model.modules()) else 1.0
    if not _piecewise_linear(model):
        return scale * (FIXED + CURVED * n * sum(sizes[m] * (above[m] + prof.macs[m]) for m in range(top + 1)))
    conv = sum(sizes[:top])
    gemm = prof.logits * conv**2 / 2 + sizes[top] * p
    carried = sum(sizes[m] * above[m] for m in range(top - 2))
    return scale * (FIXED + GEMM * n * gemm + DIRECTIONS * n * carried)


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds of one checkpoint by each method."""

    exact: float  # the build and eigvalsh
    slq: float

    def __str__(self) -> str:
        return f"exact about {self.exact:,.1f} s, slq about {self.slq:,.1f} s"


def estimate(model: nn.Module, input_shape: tuple[int, ...], n: int, hcfg, slq_dtype: str | None = None) -> Estimate:
    """Estimated seconds of an exact (float64) and an SLQ checkpoint (in ``slq_dtype``, by default auto's) of
    ``model`` on ``n`` examples of ``input_shape``."""
    prof, p = profile(model, input_shape), n_parameters(model)
    exact = build_seconds(model, prof, n, p) + EIGVALSH * p**3
    return Estimate(exact, slq_seconds(prof, n, p, hcfg, slq_dtype))
