"""Config checks: every value a run depends on is validated before any work starts.

Each config group checks its own keys beside its code (``sane_cli.data``, ``models``, ``optim``, ``methods``,
through the helpers of ``sane_cli.checks``); this module composes them with the run's top-level keys and the
checks that need the data's and model's sizes. A bad value raises :class:`UsageError` with one line naming the
key, the value and what is allowed; the command-line entry points print it and exit with status 2.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf, open_dict

from . import checks, data, methods, models, optim, trackers
from .devices import DEVICES, PRECISIONS
from .errors import UsageError
from .losses import LOSSES


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

    data.check_config(cfg)
    models.check_config(cfg)
    optim.check_config(cfg)
    _check_run(cfg)
    methods.check_config(cfg)  # (the sizes that need the data: check_against_data)
    trackers.check_config(cfg)

    with open_dict(cfg):
        if cfg.model.name == "mlp" and cfg.model.depth == 1:  # a linear model: no hidden layer, no width, so
            cfg.model.width = None  # runs that differ only in it are one model, in their records and the report
        cfg.lr = cfg.optim.lr
        cfg.depth = cfg.model.get("depth")  # null for a model of your own
        cfg.width = cfg.model.get("width")  # null for models without one (cnn: model.channels)
    return cfg


def _check_run(cfg: DictConfig) -> None:
    """The top-level keys: the loss, how long to train and log, the seed, where to run, when to stop."""
    checks.choice(cfg, "loss", LOSSES)
    checks.number(cfg, "steps", minimum=1, integer=True, optional=cfg.get("epochs") is not None)
    checks.number(cfg, "epochs", minimum=1, integer=True, optional=True)
    checks.number(cfg, "log_every", minimum=1, integer=True)
    checks.number(cfg, "seed", minimum=0, integer=True)
    checks.choice(cfg, "device", DEVICES)
    if "precision" in cfg:  # an older run config lacks it (records.ADDED_KEYS: float32)
        checks.choice(cfg, "precision", PRECISIONS)
    checks.number(cfg, "threads", minimum=1, integer=True, optional=True)
    cpus = os.cpu_count() or 1
    if cfg.get("threads") is not None and cfg.threads > cpus:  # more threads than CPUs only wait on each other
        checks.fail("threads", cfg.threads, f"must be at most this machine's {cpus} CPUs (or null: the cores the run "
                    "may use)")  # fmt: skip
    checks.flag(cfg, "save_checkpoint")
    checks.number(cfg, "max_loss", minimum=0, strict=True)
    checks.number(cfg, "stop.train_loss", minimum=0, optional=True)
    checks.number(cfg, "stop.train_acc", minimum=0, strict=True, optional=True)
    if (OmegaConf.select(cfg, "stop.train_acc") or 0) > 1:
        checks.fail("stop.train_acc", cfg.stop.train_acc, "must be in (0, 1] (a fraction of the training set)")


def check_against_data(cfg: DictConfig, n_train: int, model, input_shape: tuple[int, ...]) -> None:
    """Checks that need the dataset and model sizes: the Hessian subset, SANE's k and the batch must fit, and
    the curvature method's memory (:func:`sane_cli.methods.check_memory`). ``model`` may live on the meta
    device (sizes only); ``input_shape`` is one example's."""
    n_params = models.n_parameters(model)
    if cfg.hessian.subset is not None and cfg.hessian.subset > n_train:
        checks.fail("hessian.subset", cfg.hessian.subset, f"must be at most the training set size ({n_train})")
    from .devices import resolve_device

    methods.check_memory(cfg.hessian, model, cfg.hessian.subset or n_train, tuple(input_shape),
                         resolve_device(cfg.device))  # fmt: skip
    if cfg.hessian.k > n_params:
        checks.fail("hessian.k", cfg.hessian.k, f"must be at most the number of parameters ({n_params})")
    if cfg.optim.batch_size is not None and cfg.optim.batch_size > n_train:
        checks.fail("optim.batch_size", cfg.optim.batch_size, f"must be at most the training set size ({n_train})")


__all__ = ["UsageError", "check_against_data", "validate"]
