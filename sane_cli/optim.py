"""The optimiser of a run, built in one place, the stability threshold that its sharpness is read against,
and the preconditioner that an adaptive optimiser applies to the gradient.

Stability thresholds, for the top eigenvalue lambda of the Hessian of the loss (Cohen et al. 2021, "Gradient
descent on neural networks typically occurs at the edge of stability", section 3 and appendix: the largest
curvature along which the update of a quadratic does not diverge):

    plain GD / SGD, step size eta            lambda < 2 / eta
    heavy-ball momentum beta (PyTorch SGD)   lambda < (2 + 2 beta) / eta
    Nesterov momentum beta (PyTorch SGD)     lambda < (2 + 2 beta) / ((1 + 2 beta) eta)

Weight decay wd adds wd * theta to the gradient, so the curvature the update sees is lambda + wd and each
threshold on lambda is lowered by wd.

Adam (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability", arXiv 2207.14484, section 2)
is preconditioned heavy-ball with an exponential moving average m_t = beta1 m_{t-1} + (1 - beta1) g_t: its
update is theta -= eta P_t^-1 m_t with the diagonal preconditioner

    P_t = (1 - beta1^t) diag(sqrt(v_t / (1 - beta2^t)) + eps)

(v_t Adam's moving average of squared gradients; the factor 1 - beta1^t is the bias correction of m_t moved
into P_t). The quantity that meets a threshold is the preconditioned sharpness lambda_max(P_t^-1 H), and the
threshold is that of the moving-average heavy ball, (2 + 2 beta1) / ((1 - beta1) eta): 38/eta at beta1 =
0.9. Adam's weight decay (an L2 term in the gradient, as in torch.optim.Adam) makes the curvature it sees
P^-1 (H + wd I); its preconditioned sharpness is taken of H + wd I, and the threshold is not lowered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from . import checks


def _sgd(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    """torch.optim.SGD: step size, momentum (heavy-ball or Nesterov), weight decay."""
    return torch.optim.SGD(
        params,
        lr=float(optim_cfg.lr),
        momentum=float(optim_cfg.momentum),
        nesterov=bool(optim_cfg.get("nesterov", False)),
        weight_decay=float(optim_cfg.weight_decay),
    )


def _adam(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    """torch.optim.Adam: step size, beta1, beta2, eps, weight decay."""
    return torch.optim.Adam(
        params,
        lr=float(optim_cfg.lr),
        betas=(float(optim_cfg.beta1), float(optim_cfg.beta2)),
        eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay),
    )


def _momentum_threshold(optim_cfg) -> float:
    """2/lr, (2 + 2 beta)/lr with heavy-ball momentum beta, (2 + 2 beta)/((1 + 2 beta) lr) with Nesterov's,
    each less the weight decay (module docstring)."""
    lr, beta = float(optim_cfg.lr), float(optim_cfg.momentum)
    if optim_cfg.get("nesterov", False) and beta > 0:
        limit = (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    else:
        limit = (2 + 2 * beta) / lr
    return limit - float(optim_cfg.weight_decay)


def _adam_threshold(optim_cfg) -> float:
    """(2 + 2 beta1)/((1 - beta1) lr), on the preconditioned sharpness (module docstring)."""
    beta1 = float(optim_cfg.beta1)
    return (2 + 2 * beta1) / ((1 - beta1) * float(optim_cfg.lr))


def adam_preconditioner(opt: torch.optim.Optimizer, params: list | None = None) -> list[torch.Tensor] | None:
    """Adam's diagonal preconditioner P_t = (1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps) for each of
    ``params`` (default: the optimiser's own, in its order; else matched to its state by identity), after the
    optimiser's latest step t (module docstring; the P_t^-1 of the update to come but for the next gradient's
    share of v; with amsgrad, the running maximum of v). None before Adam's first step (v_0 is not defined)."""
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = [p for g in opt.param_groups for p in g["params"]] if params is None else params
    diagonal = []
    for p in params:
        group, state = group_of[id(p)], opt.state.get(p)
        beta1, beta2 = group["betas"]
        key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
        if not state or key not in state:
            return None
        t = float(state["step"])
        v_hat = state[key].double() / (1 - beta2**t)
        diagonal.append((1 - beta1**t) * (v_hat.sqrt() + group["eps"]))
    return diagonal


def _check_momentum(cfg) -> None:
    checks.fraction(cfg, "optim.momentum")
    checks.flag(cfg, "optim.nesterov")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        checks.fail("optim.nesterov", True, "needs optim.momentum > 0 (Nesterov momentum without momentum is "
                    "plain SGD)")  # fmt: skip
    limit = _momentum_threshold(cfg.optim)
    if limit <= 0:  # the decay alone overshoots: no curvature is stable
        checks.fail("optim.weight_decay", cfg.optim.weight_decay, "must be below the stability threshold it lowers "
                    f"({limit + cfg.optim.weight_decay:g} at this lr and momentum)")  # fmt: skip


def _check_gd(cfg) -> None:
    if cfg.optim.batch_size is not None:
        checks.fail("optim.batch_size", cfg.optim.batch_size, "must be null for optim=gd (full batch); for "
                    "mini-batches use optim=sgd")  # fmt: skip
    _check_momentum(cfg)


def _check_adam(cfg) -> None:
    checks.fraction(cfg, "optim.beta1")
    checks.fraction(cfg, "optim.beta2")
    checks.number(cfg, "optim.eps", minimum=0, strict=True)


@dataclass(frozen=True)
class OptimiserSpec:
    """An optimiser option: how it is built, the stability threshold of its sharpness, the checks of its
    own keys, and, for an adaptive one, the diagonal preconditioner its sharpness is read through."""

    build: Callable[..., torch.optim.Optimizer]  # (parameters, optim config) -> optimiser
    threshold: Callable[..., float]  # (optim config) -> the largest stable sharpness
    check: Callable[..., None]  # (whole run config) -> None; raises UsageError on a bad key of its own
    preconditioner: Callable[[torch.optim.Optimizer], list[torch.Tensor] | None] | None = None


# gd: every step on the whole training set; sgd: shuffled mini-batches; adam: Adam, full batch unless
# optim.batch_size is set. Each option's config file (conf/optim/<name>.yaml) sets batch_size (null: full batch,
# see full_batch) and default_lr, the step size a run gets when the top-level `lr` is not given. Adding an
# optimiser: its builder, threshold and checks here, an entry below, its yaml and its tests.
OPTIMISERS = checks.Registry("optim.name", {
    "gd": OptimiserSpec(_sgd, _momentum_threshold, _check_gd),
    "sgd": OptimiserSpec(_sgd, _momentum_threshold, _check_momentum),
    "adam": OptimiserSpec(_adam, _adam_threshold, _check_adam, adam_preconditioner),
})  # fmt: skip


def check_config(cfg) -> None:
    """The ``optim`` group's keys of a run config: the name, step size, weight decay and batch size, then the
    option's own."""
    checks.choice(cfg, "optim.name", OPTIMISERS)
    checks.number(cfg, "optim.lr", minimum=0, strict=True)
    checks.float32(cfg, "optim.lr")
    checks.float32(cfg, "optim.weight_decay")
    checks.number(cfg, "optim.weight_decay", minimum=0)
    checks.number(cfg, "optim.batch_size", minimum=1, integer=True, optional=True)  # null: full batch
    OPTIMISERS[cfg.optim.name].check(cfg)


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    """The torch optimiser that ``optim_cfg.name`` names, set up as the config says."""
    return OPTIMISERS[optim_cfg.name].build(params, optim_cfg)


def full_batch(optim_cfg) -> bool:
    """Whether every step sees the whole training set (the loss descended is the full training loss): the
    config's ``batch_size`` is null."""
    return optim_cfg.get("batch_size") is None


def is_preconditioned(optim_cfg) -> bool:
    """Whether the optimiser's sharpness is read through a preconditioner, lambda_max(P^-1 H) (Adam)."""
    return OPTIMISERS[optim_cfg.name].preconditioner is not None


def preconditioner(opt: torch.optim.Optimizer, optim_cfg) -> list[torch.Tensor] | None:
    """The diagonal preconditioner ``opt`` applies after its latest step (one tensor per parameter), for an
    optimiser that has one and has taken a step; None otherwise."""
    get = OPTIMISERS[optim_cfg.name].preconditioner
    return None if get is None else get(opt)


def stability_threshold(optim_cfg) -> float:
    """The largest sharpness for which the optimiser's update is stable (module docstring): 2/lr for plain
    GD and SGD, (2 + 2 beta)/lr with heavy-ball momentum beta, and (2 + 2 beta)/((1 + 2 beta) lr) with
    Nesterov momentum, each less the weight decay; for Adam (2 + 2 beta1)/((1 - beta1) lr), on the
    preconditioned sharpness.

    >>> from omegaconf import OmegaConf
    >>> def sgd(**kw):
    ...     return OmegaConf.create({"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, **kw})
    >>> stability_threshold(sgd(lr=0.1))
    20.0
    >>> round(stability_threshold(sgd(lr=0.1, momentum=0.9)), 10)
    38.0
    >>> round(stability_threshold(sgd(lr=0.1, momentum=0.5, nesterov=True)), 10)
    15.0
    >>> round(stability_threshold(OmegaConf.create(dict(name="adam", lr=0.01, beta1=0.9, weight_decay=0.1))), 10)
    3800.0
    """
    return OPTIMISERS[optim_cfg.name].threshold(optim_cfg)
