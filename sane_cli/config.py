"""Config checks: every value a run depends on is validated before any work starts.

A bad value raises :class:`UsageError` with one line naming the key, the value and what is allowed;
the command-line entry points print it and exit with status 2.
"""

from __future__ import annotations

import math
import os

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import UsageError
from .models import ACTIVATIONS, LAYERED, MODELS, POOLINGS
from .optim import OPTIMISERS, stability_threshold

LOSSES = ("cross_entropy", "mse")
DEVICES = ("auto", "cpu", "cuda")
HESSIAN_METHODS = ("exact", "block_diag", "block_band", "lanczos", "slq", "auto")
DTYPES = ("float64", "float32")
EIG_MODES = ("abs", "clip")
REORTHS = ("none", "selective", "full")  # SLQ's reorthogonalisation (sane_cli.iterative.slq)
DATASETS = ("mnist1d", "synthetic", "digits", "mnist", "fashion_mnist", "cifar10")
FLOAT32_MAX = 3.4028234663852886e38
DIGITS_IMAGES = 1797  # scikit-learn's bundled digits (sane_cli.data.DIGITS)


def _fail(key: str, value, allowed: str) -> None:
    raise UsageError(f"{key}={value!r} is invalid: {allowed}")


def _check_number(
    cfg: DictConfig, key: str, *, minimum: float, strict: bool = False, integer: bool = False, optional: bool = False
) -> None:
    value = OmegaConf.select(cfg, key)
    kind = "an integer" if integer else "a number"
    bound = f"{'>' if strict else '>='} {minimum:g}"
    if value is None:
        if optional:
            return
        _fail(key, value, f"must be {kind} {bound}")
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        _fail(key, value, f"must be {kind} {bound}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        _fail(key, value, f"must be {kind} {bound}")


def _check_fraction(cfg: DictConfig, key: str) -> None:
    """A decay or momentum coefficient: a number in [0, 1)."""
    _check_number(cfg, key, minimum=0)
    if OmegaConf.select(cfg, key) >= 1:
        _fail(key, OmegaConf.select(cfg, key), "must be in [0, 1)")


def _check_choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        _fail(key, value, f"must be one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> DictConfig:
    """Check a composed run config, resolve it, and return it with the shortcuts `lr`, `depth` and `width`
    made equal to `optim.lr`, `model.depth` and `model.width` (the values actually used; `width` null for
    models without one).

    Raises:
        UsageError: on the first bad value, naming the key, the value and what is allowed.
    """
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise UsageError(f"config does not resolve: {e}".splitlines()[0]) from e

    _check_choice(cfg, "dataset.name", DATASETS)
    _check_number(
        cfg,
        "dataset.n_train",
        minimum=1,
        integer=True,
        optional=cfg.dataset.name in ("mnist", "fashion_mnist", "cifar10"),
    )
    _check_number(
        cfg,
        "dataset.n_test",
        minimum=1,
        integer=True,
        optional=cfg.dataset.name in ("mnist", "fashion_mnist", "cifar10"),
    )
    _check_number(cfg, "dataset.per_class", minimum=1, integer=True, optional=True)
    if cfg.dataset.name == "synthetic":
        _check_number(cfg, "dataset.n_features", minimum=1, integer=True)
        _check_number(cfg, "dataset.n_classes", minimum=2, integer=True)
        _check_number(cfg, "dataset.noise", minimum=0)

    _check_choice(cfg, "model.name", tuple(MODELS))
    _check_number(cfg, "model.depth", minimum=1, integer=True)
    if cfg.model.name == "mlp":
        _check_number(cfg, "model.width", minimum=1, integer=True)
    if cfg.model.name == "cnn":
        _check_number(cfg, "model.channels", minimum=1, integer=True)
        _check_number(cfg, "model.kernel", minimum=1, integer=True)
        if cfg.model.kernel % 2 == 0:
            _fail("model.kernel", cfg.model.kernel, "must be odd (the padding keeps the size only for odd widths)")
        _check_choice(cfg, "model.pooling", POOLINGS)
    _check_choice(cfg, "model.activation", tuple(ACTIVATIONS))

    _check_choice(cfg, "optim.name", OPTIMISERS)
    _check_number(cfg, "optim.lr", minimum=0, strict=True)
    for key in ("optim.lr", "optim.weight_decay"):  # torch applies them to float32 parameters
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > FLOAT32_MAX:
            _fail(key, value, f"must be at most {FLOAT32_MAX:.4g}, the largest float32 (the parameters' precision)")
    _check_number(cfg, "optim.weight_decay", minimum=0)
    _check_number(cfg, "optim.batch_size", minimum=1, integer=True, optional=True)  # null: full batch
    if cfg.optim.name == "gd" and cfg.optim.batch_size is not None:
        _fail("optim.batch_size", cfg.optim.batch_size, "must be null for optim=gd (full batch); for mini-batches "
              "use optim=sgd")  # fmt: skip
    if cfg.optim.name == "adam":
        _check_fraction(cfg, "optim.beta1")
        _check_fraction(cfg, "optim.beta2")
        _check_number(cfg, "optim.eps", minimum=0, strict=True)
    else:
        _check_fraction(cfg, "optim.momentum")
        if not isinstance(cfg.optim.get("nesterov", False), bool):
            _fail("optim.nesterov", cfg.optim.nesterov, "must be true or false")
        if cfg.optim.get("nesterov", False) and cfg.optim.momentum == 0:
            _fail("optim.nesterov", True, "needs optim.momentum > 0 (Nesterov momentum without momentum is plain SGD)")
        if stability_threshold(cfg.optim) <= 0:  # the decay alone overshoots: no curvature is stable
            _fail("optim.weight_decay", cfg.optim.weight_decay, "must be below the stability threshold it lowers "
                  f"({stability_threshold(cfg.optim) + cfg.optim.weight_decay:g} at this lr and momentum)")  # fmt: skip

    _check_choice(cfg, "loss", LOSSES)
    _check_number(cfg, "steps", minimum=1, integer=True, optional=cfg.get("epochs") is not None)
    _check_number(cfg, "epochs", minimum=1, integer=True, optional=True)
    _check_number(cfg, "log_every", minimum=1, integer=True)
    _check_number(cfg, "seed", minimum=0, integer=True)
    _check_choice(cfg, "device", DEVICES)
    _check_number(cfg, "threads", minimum=1, integer=True, optional=True)
    _check_number(cfg, "max_loss", minimum=0, strict=True)
    _check_number(cfg, "stop.train_loss", minimum=0, optional=True)
    _check_number(cfg, "stop.train_acc", minimum=0, strict=True, optional=True)
    if (OmegaConf.select(cfg, "stop.train_acc") or 0) > 1:
        _fail("stop.train_acc", cfg.stop.train_acc, "must be in (0, 1] (a fraction of the training set)")

    _check_choice(cfg, "hessian.method", HESSIAN_METHODS)
    if cfg.hessian.method in ("block_diag", "block_band") and cfg.model.name not in LAYERED:
        _fail("hessian.method", cfg.hessian.method, f"needs a model of layer blocks ({', '.join(LAYERED)}); "
              f"model={cfg.model.name} takes exact, lanczos, slq or auto")  # fmt: skip
    _check_number(cfg, "hessian.every", minimum=1, integer=True)
    _check_number(cfg, "hessian.subset", minimum=1, integer=True, optional=True)  # null: the whole training set
    _check_number(cfg, "hessian.alpha", minimum=0, strict=True)
    _check_number(cfg, "hessian.rho", minimum=0, strict=True)
    _check_number(cfg, "hessian.k", minimum=1, integer=True)
    _check_number(cfg, "hessian.topk_vectors", minimum=0, integer=True)
    _check_choice(cfg, "hessian.dtype", DTYPES)
    _check_choice(cfg, "hessian.auto_slq_dtype", DTYPES)
    _check_choice(cfg, "hessian.eig_mode", EIG_MODES)
    _check_number(cfg, "hessian.band", minimum=0, integer=True)
    _check_number(cfg, "hessian.topk", minimum=1, integer=True)
    _check_number(cfg, "hessian.probes", minimum=2, integer=True)
    _check_number(cfg, "hessian.steps", minimum=1, integer=True)
    _check_number(cfg, "hessian.tol", minimum=0, strict=True)
    _check_number(cfg, "hessian.max_iter", minimum=1, integer=True)
    _check_number(cfg, "hessian.seed", minimum=0, integer=True)
    _check_number(cfg, "hessian.exact_max_params", minimum=1, integer=True)
    _check_number(cfg, "hessian.spike_threshold", minimum=0, strict=True)
    _check_number(cfg, "hessian.spike_after", minimum=1, integer=True)
    _check_number(cfg, "hessian.spike_max", minimum=0, integer=True)
    reorth = OmegaConf.select(cfg, "hessian.reorth")
    if isinstance(reorth, bool):  # true / false (before 0.5): full / none
        with open_dict(cfg):
            cfg.hessian.reorth = "full" if reorth else "none"
    _check_choice(cfg, "hessian.reorth", REORTHS)
    for key in ("hessian.deflate", "hessian.on_spike"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            _fail(key, OmegaConf.select(cfg, key), "must be true or false")

    if cfg.dataset.name == "digits" and cfg.dataset.n_train + cfg.dataset.n_test > DIGITS_IMAGES:
        _fail("dataset.n_train", cfg.dataset.n_train, f"plus dataset.n_test ({cfg.dataset.n_test}) must be at most "
              f"{DIGITS_IMAGES}, the images of dataset=digits")  # fmt: skip
    n_train = cfg.dataset.get("n_train")
    subset = cfg.hessian.subset
    if n_train is not None and cfg.dataset.get("per_class") is None and subset is not None and subset > n_train:
        _fail("hessian.subset", cfg.hessian.subset, f"must be at most dataset.n_train ({n_train})")

    with open_dict(cfg):
        cfg.lr = cfg.optim.lr
        cfg.depth = cfg.model.depth
        cfg.width = cfg.model.get("width")  # null for models without one (cnn: model.channels)
    return cfg


def check_against_data(cfg: DictConfig, n_train: int, model) -> None:
    """Checks that need the dataset and model sizes: the Hessian subset and SANE's k must fit, and the
    dense Hessian (exact, block_band), its layer blocks (block_diag) or SLQ's kept Lanczos vectors (full
    reorthogonalisation) must fit in memory. ``model`` may live
    on the meta device (sizes only)."""
    from torch import nn

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, nn.Linear)]
    from .methods import precision, resolve_method

    method = resolve_method(cfg.hessian, model, n_params)  # auto's choice; any other method as given
    size = 8 if cfg.hessian.dtype == "float64" else 4
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # every layer block, and eigh's copy and workspace for the largest
    block_need = size * (sum(b**2 for b in blocks) + 2 * max(blocks, default=0) ** 2)
    need = 0
    if method in ("exact", "block_band"):
        need = 3 * size * n_params**2  # the matrix, eigh's copy and workspace
        what = f"the dense Hessian of {n_params} parameters"
        fix = "use hessian=auto, hessian=slq" + (" or hessian=block_diag" if block_need <= have else "")
    elif method == "block_diag":
        need = block_need
        what = f"the layer blocks (largest {max(blocks, default=0)} parameters)"
        fix = "use hessian=auto or hessian=slq"
    elif method == "slq" and cfg.hessian.reorth == "full":  # every probe's Lanczos vectors are kept
        steps = min(int(cfg.hessian.steps), n_params)
        need = (8 if precision(cfg.hessian, method) == "float64" else 4) * steps * int(cfg.hessian.probes) * n_params
        what = f"SLQ's Lanczos vectors ({steps} steps x {cfg.hessian.probes} probes x {n_params} parameters)"
        fix = "lower hessian.steps or hessian.probes, or use hessian.reorth=none (no bias bounds then)"
    if need > have:
        raise UsageError(
            f"hessian.method={method} needs about {need / 2**30:,.0f} GiB for {what} (this machine has "
            f"{have / 2**30:.0f} GiB); {fix}"
        )
    if cfg.hessian.subset is not None and cfg.hessian.subset > n_train:
        _fail("hessian.subset", cfg.hessian.subset, f"must be at most the training set size ({n_train})")
    if cfg.hessian.k > n_params:
        _fail("hessian.k", cfg.hessian.k, f"must be at most the number of parameters ({n_params})")
    if cfg.optim.batch_size is not None and cfg.optim.batch_size > n_train:
        _fail("optim.batch_size", cfg.optim.batch_size, f"must be at most the training set size ({n_train})")
