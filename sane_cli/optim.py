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

from collections.abc import Iterable

import torch

# gd: every step on the whole training set; sgd: shuffled mini-batches; adam: Adam, full batch unless
# optim.batch_size is set. Every optimiser's config file (conf/optim/<name>.yaml) sets batch_size (null: full
# batch) and default_lr, the step size a run gets when the top-level `lr` is not given.
OPTIMISERS = ("gd", "sgd", "adam")
PRECONDITIONED = ("adam",)  # optimisers whose sharpness is lambda_max(P^-1 H) (see preconditioner)


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg) -> torch.optim.Optimizer:
    """torch.optim.SGD (gd, sgd: step size, momentum heavy-ball or Nesterov, weight decay) or
    torch.optim.Adam (step size, beta1, beta2, eps, weight decay) as the config says."""
    if optim_cfg.name == "adam":
        return torch.optim.Adam(
            params,
            lr=float(optim_cfg.lr),
            betas=(float(optim_cfg.beta1), float(optim_cfg.beta2)),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
        )
    return torch.optim.SGD(
        params,
        lr=float(optim_cfg.lr),
        momentum=float(optim_cfg.momentum),
        nesterov=bool(optim_cfg.get("nesterov", False)),
        weight_decay=float(optim_cfg.weight_decay),
    )


def full_batch(optim_cfg) -> bool:
    """Whether every step sees the whole training set (the loss descended is the full training loss): the
    config's ``batch_size`` is null."""
    return optim_cfg.get("batch_size") is None


def stability_threshold(optim_cfg) -> float:
    """The largest sharpness for which the optimiser's update is stable (module docstring): 2/lr for plain
    GD and SGD, (2 + 2 beta)/lr with heavy-ball momentum beta, and (2 + 2 beta)/((1 + 2 beta) lr) with
    Nesterov momentum, each less the weight decay; for Adam (2 + 2 beta1)/((1 - beta1) lr), on the
    preconditioned sharpness.

    >>> from types import SimpleNamespace as C
    >>> stability_threshold(C(name="gd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0))
    20.0
    >>> round(stability_threshold(C(name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)), 10)
    38.0
    >>> round(stability_threshold(C(name="sgd", lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.0)), 10)
    15.0
    >>> round(stability_threshold(C(name="adam", lr=0.01, beta1=0.9, weight_decay=0.1)), 10)
    3800.0
    """
    lr = float(optim_cfg.lr)
    if optim_cfg.name == "adam":
        beta1 = float(optim_cfg.beta1)
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    beta = float(optim_cfg.momentum)
    if getattr(optim_cfg, "nesterov", False) and beta > 0:
        limit = (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    else:
        limit = (2 + 2 * beta) / lr
    return limit - float(optim_cfg.weight_decay)


def preconditioner(opt: torch.optim.Optimizer) -> list[torch.Tensor] | None:
    """Adam's diagonal preconditioner P_t = (1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps) for each
    parameter, after the optimiser's latest step t (module docstring; the P_t^-1 of the update to come
    but for the next gradient's share of v). None for optimisers without one, and for Adam before its first
    step (v_0 is not defined)."""
    if not isinstance(opt, torch.optim.Adam):
        return None
    diagonal = []
    for group in opt.param_groups:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            state = opt.state.get(p)
            if not state or "exp_avg_sq" not in state:
                return None
            t = float(state["step"])
            v_hat = state["exp_avg_sq"].double() / (1 - beta2**t)
            diagonal.append((1 - beta1**t) * (v_hat.sqrt() + group["eps"]))
    return diagonal
