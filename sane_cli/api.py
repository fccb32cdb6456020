"""sane-run's curvature from any training loop: measure a model's Hessian on a dataset, and write a run folder
that ``sane-report`` reads, at the steps the caller chooses.

    from sane_cli import CurvatureProbe, measure_curvature

    c = measure_curvature(model, (x, y))                 # one checkpoint: c.lambda_max, c.n_eff, c.sane, ...
    with CurvatureProbe("outputs/mine", model, (x, y), optimizer=opt, test_data=(xt, yt)) as probe:
        for step in range(steps + 1):
            if step % 100 == 0:
                probe.measure(step)                       # hessian.csv, layers.csv, spectra/step_<step>.npz
                probe.log_metrics(step)                   # metrics.csv
            if step < steps:
                ...                                       # the loop's own step

The curvature is that of the mean loss over every example given (tensors, or all the batches of a DataLoader),
of the model in eval mode, by the methods of ``sane-run``'s ``hessian`` group (:func:`hessian_config`). The
sharpness is read against the stability threshold of the optimiser given, taken from the optimiser itself at
each checkpoint (:func:`stability_threshold`: SGD with or without momentum, dampening or Nesterov's, Adam,
AdamW; a learning-rate schedule's current rate), so a rate changed by a scheduler moves the threshold with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .errors import UsageError
from .losses import LOSSES, LossFn, loss_function
from .measures import checkpoint_row
from .methods import CHOICES, measure, preconditioned_sharpness, top_eigenvalue
from .methods import check_config as check_hessian
from .models import BUILT_IN, MODELS, eval_mode, n_parameters, spec_of
from .optim import adam_preconditioner
from .records.schema import FINAL_COLUMNS, STATUSES

log = logging.getLogger(__name__)

Data = tuple[torch.Tensor, torch.Tensor] | Iterable


def hessian_config(method: str = "auto", /, **overrides: Any) -> DictConfig:
    """The ``hessian`` config of ``method`` (conf/hessian/<method>.yaml: every key of ``sane-run``'s group, with
    its defaults) with ``overrides`` (e.g. ``probes=16``, ``dtype="float32"``, ``layers=False``).

    Raises:
        UsageError: an unknown method or key, or a bad value, in one line naming it.
    """
    return _hessian(method, overrides, "mlp")


def _hessian(method: str, overrides: dict[str, Any], model_name: str) -> DictConfig:
    """:func:`hessian_config`, checked as sane-run checks its group for a model of the registry's ``model_name``
    (a layer-ordered method needs a layered one)."""
    if method not in CHOICES:
        raise UsageError(f"hessian method {method!r} is unknown; choose one of {', '.join(CHOICES)}")
    overrides = dict(overrides)
    if overrides.pop("method", method) != method:
        raise UsageError(f"hessian's method {overrides} differs from method={method!r}; give it once, as method=")
    folder = resources.files("sane_cli.conf") / "hessian"
    base = OmegaConf.load(folder / "exact.yaml")
    own = OmegaConf.load(folder / f"{method}.yaml")
    own.pop("defaults", None)
    hcfg = OmegaConf.merge(base, own)
    OmegaConf.set_struct(hcfg, True)
    try:
        hcfg = OmegaConf.merge(hcfg, overrides)
    except Exception as e:  # omegaconf's ConfigKeyError: a key the group does not have
        raise UsageError(f"hessian config: {str(e).splitlines()[0]}; the keys are {', '.join(base)}") from None
    check_hessian(OmegaConf.create({"hessian": hcfg, "model": {"name": model_name}}))  # sane-run's checks
    return hcfg


def hessian_of(method: str, hessian: Mapping[str, Any] | None, model: nn.Module | None = None) -> DictConfig:
    """:func:`hessian_config` of ``method`` with the mapping ``hessian`` of keys over it (None: none), checked for
    ``model`` where given."""
    if hessian is not None and not isinstance(hessian, Mapping):
        raise UsageError(f"hessian must be a mapping of the hessian group's keys (e.g. {{'probes': 16}}), not "
                         f"{type(hessian).__name__}")  # fmt: skip
    return _hessian(method, dict(hessian or {}), "mlp" if model is None else _model_name(model))


@dataclass(frozen=True)
class Threshold:
    """What an optimiser's sharpness is read against: the ``value`` of its stability threshold (NaN where
    unknown), the learning rate, and for an adaptive optimiser its diagonal preconditioner (a function of the
    optimiser, None before its first step) and the weight decay that its preconditioned curvature includes."""

    value: float
    lr: float
    preconditioner: Callable[[torch.optim.Optimizer, list[torch.Tensor]], list[torch.Tensor] | None] | None = None
    weight_decay: float = 0.0
    why: str = ""  # where the value is NaN: why


def _groups_agree(opt: torch.optim.Optimizer, keys: tuple[str, ...]) -> str:
    """'' where every parameter group has the same ``keys``; else which one differs."""
    first = opt.param_groups[0]
    for key in keys:
        if any(g.get(key) != first.get(key) for g in opt.param_groups[1:]):
            return f"its parameter groups have different {key}s (one threshold needs one value)"
    return ""


def _sgd(opt: torch.optim.Optimizer) -> Threshold:
    """torch.optim.SGD: 2/lr, heavy-ball (2 + 2 beta)/((1 - dampening) lr), Nesterov (2 + 2 beta)/((1 + 2 beta)
    lr), each less the weight decay (sane_cli.optim's docstring; dampening tau scales the step of the momentum
    buffer by 1 - tau, which is heavy ball at the rate (1 - tau) lr)."""
    g = opt.param_groups[0]
    lr, beta, tau, wd = float(g["lr"]), float(g["momentum"]), float(g.get("dampening", 0.0)), float(g["weight_decay"])
    if lr <= 0:  # a step of nothing is stable along any curvature
        return Threshold(float("inf"), lr)
    if g.get("nesterov") and beta > 0:
        limit = (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    elif beta > 0:
        limit = (2 + 2 * beta) / ((1 - tau) * lr) if tau < 1 else float("inf")
    else:
        limit = 2 / lr
    return Threshold(limit - wd, lr)


def _adam(opt: torch.optim.Optimizer) -> Threshold:
    """Adam (weight decay in the gradient, L2): (2 + 2 beta1)/((1 - beta1) lr) on lambda_max(P^-1 (H + wd I)).
    AdamW (or Adam with decoupled_weight_decay): the weights shrink by 1 - lr wd outside the moving average,
    which lowers the threshold on lambda_max(P^-1 H) to (1 + beta1)(2 - lr wd)/((1 - beta1) lr) (the linearised
    update's eigenvalue reaches -1 there; tests/test_api.py runs torch's AdamW either side of it)."""
    g = opt.param_groups[0]
    lr, beta1, wd = float(g["lr"]), float(g["betas"][0]), float(g["weight_decay"])
    if lr <= 0:  # a step of nothing is stable along any curvature
        return Threshold(float("inf"), lr)
    if isinstance(opt, torch.optim.AdamW) or g.get("decoupled_weight_decay"):
        return Threshold((1 + beta1) * (2 - lr * wd) / ((1 - beta1) * lr), lr, adam_preconditioner)
    return Threshold((2 + 2 * beta1) / ((1 - beta1) * lr), lr, adam_preconditioner, wd)


OPTIMISERS: dict[type, tuple[Callable[[torch.optim.Optimizer], Threshold], tuple[str, ...]]] = {
    torch.optim.SGD: (_sgd, ("lr", "momentum", "dampening", "nesterov", "weight_decay")),
    torch.optim.Adam: (_adam, ("lr", "betas", "eps", "weight_decay", "amsgrad")),
    torch.optim.AdamW: (_adam, ("lr", "betas", "eps", "weight_decay", "amsgrad")),
}


def threshold_of(optimizer: torch.optim.Optimizer | None, params: list[torch.Tensor] | None = None) -> Threshold:
    """The stability threshold of ``optimizer`` as it is now (its current learning rate), or a NaN one saying why
    (no optimiser, an unknown class, parameter groups that disagree, or one that does not hold exactly the
    model's trainable ``params``, where given)."""
    if optimizer is None:
        return Threshold(float("nan"), float("nan"), why="no optimiser given")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(f"optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
    lr = float(optimizer.param_groups[0].get("lr", float("nan")))
    held = {id(p) for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    if params is not None and held != {id(p) for p in params}:
        return Threshold(float("nan"), lr, why="the optimiser does not train exactly the model's trainable parameters")
    entry = next((v for cls, v in OPTIMISERS.items() if type(optimizer) is cls), None)
    if entry is None:
        known = ", ".join(f"torch.optim.{c.__name__}" for c in OPTIMISERS)
        return Threshold(float("nan"), lr, why=f"{type(optimizer).__name__} has no known threshold ({known} have)")
    read, keys = entry
    differ = _groups_agree(optimizer, keys)
    if differ:
        return Threshold(float("nan"), lr, why=differ)
    return read(optimizer)


def stability_threshold(optimizer: torch.optim.Optimizer) -> float:
    """The largest sharpness for which ``optimizer``'s update is stable, read from the optimiser itself (its
    class and its first parameter group, as it is now): 2/lr for SGD, (2 + 2 beta)/lr with heavy-ball
    momentum, and so on (:func:`threshold_of`); NaN for an optimiser without a known one. Adam's and AdamW's
    is on the preconditioned sharpness lambda_max(P^-1 H).

    >>> w = [torch.nn.Parameter(torch.zeros(2))]
    >>> stability_threshold(torch.optim.SGD(w, lr=0.1))
    20.0
    >>> round(stability_threshold(torch.optim.SGD(w, lr=0.1, momentum=0.9)), 10)
    38.0
    >>> round(stability_threshold(torch.optim.Adam(w, lr=0.01)), 10)
    3800.0
    """
    t = threshold_of(optimizer)
    if t.why:
        log.warning("no stability threshold: %s", t.why)
    return t.value


def as_tensors(data: Data, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of ``data``: a pair of tensors as they are, or every batch of a DataLoader (or any iterable of
    (inputs, labels) pairs) concatenated in order, on ``device``.

    Raises:
        UsageError: ``data`` is neither, or its parts do not pair up.
    """
    arrays = torch.Tensor | np.ndarray
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, arrays) for t in data):
        x, y = (torch.as_tensor(t) for t in data)
    else:
        try:
            batches = [(torch.as_tensor(b[0]), torch.as_tensor(b[1])) for b in data]
        except (TypeError, IndexError, KeyError, ValueError, RuntimeError) as e:
            raise UsageError(
                f"data must be a pair of tensors (x, y) or a DataLoader of (inputs, labels) batches, not "
                f"{type(data).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:80]}); for batches of "
                "another form give the examples as data=(x, y)"
            ) from None
        if not batches:
            raise UsageError("data holds no examples (an empty DataLoader); give it the examples to measure on")
        try:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        except RuntimeError as e:
            raise UsageError(f"data's batches do not stack into one set ({str(e).splitlines()[0][:120]}); give the "
                             "examples as data=(x, y)") from None  # fmt: skip
    if len(x) != len(y) or len(y) == 0:
        raise UsageError(f"data must hold as many labels as inputs, at least one: {len(x)} inputs, {len(y)} labels")
    return (x, y) if device is None else (x.to(device), y.to(device))


def _logits(model: nn.Module, x: torch.Tensor) -> int:
    """The model's outputs per example, from a forward pass of two examples (eval mode, no gradient).

    Raises:
        UsageError: the model does not take these inputs, or does not return a (n, outputs) tensor.
    """
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:2])
    except Exception as e:
        raise UsageError(f"the model does not take the data's inputs of shape {tuple(x.shape[1:])} per example "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None  # fmt: skip
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(x[:2]):
        kind = type(out).__name__ if not isinstance(out, torch.Tensor) else f"a tensor of shape {tuple(out.shape)}"
        raise UsageError(f"model(x) must return logits, a tensor (n, outputs), not {kind}; wrap the model so that "
                         "it does")  # fmt: skip
    return int(out.shape[1])


def _check_labels(loss: str, y: torch.Tensor, outputs: int, classes: int) -> None:
    """A built-in loss's labels: integer classes, one per example, 0 to the model's outputs - 1."""
    if y.is_floating_point() or y.is_complex() or y.ndim != 1:
        raise UsageError(f"loss={loss!r} takes integer class labels, one per example, not {y.dtype} labels of shape "
                         f"{tuple(y.shape)}; give a loss function for other targets")  # fmt: skip
    low, high = int(y.min()), int(y.max())
    if classes != outputs or low < 0 or high >= outputs:
        raise UsageError(f"loss={loss!r} needs labels 0 to {outputs - 1} for the model's {outputs} outputs "
                         f"(classes={classes}); the labels run {low} to {high}")  # fmt: skip


def _loss(loss: str | LossFn, classes: int) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise UsageError(f"loss {loss!r} is unknown; choose one of {', '.join(LOSSES)} or give a function "
                         "(logits, labels) -> the mean loss")  # fmt: skip
    return loss_function(loss, classes)


def _model_name(model: nn.Module) -> str:
    """The registry name of the model's structure (mlp, cnn, resnet: a layer-structured build) or custom."""
    spec = spec_of(model)
    return next((n for n, s in MODELS.items() if s is spec and n in BUILT_IN), "custom")


def _column(name: str) -> property:
    """A read-only float attribute for the row's column ``name``."""
    return property(lambda self: float(self.row[name]), doc=f"the row's {name}, a float")


@dataclass
class Curvature:
    """One curvature checkpoint: ``row`` (hessian.csv's columns: lambda_max, trace, n_eff, sane and the rest,
    with the optimiser's threshold and sharpness ratio where an optimiser was given), the ``eigenvalues``
    (descending: all of them for exact, block_diag and block_band; the top Ritz values for lanczos and slq),
    the top ``eigenvectors`` (P, hessian.topk_vectors), one row per layer where measured (layers.csv's
    columns), and the arrays the spectrum file keeps beside (SLQ's nodes and weights)."""

    row: dict[str, Any]
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    layers: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    lambda_max = _column("lambda_max")
    trace = _column("trace")
    n_eff = _column("n_eff")
    sane = _column("sane")
    sharpness_ratio = _column("sharpness_ratio")


class _Measurer:
    """What a checkpoint needs, fixed once: the model's loss on its data, the Hessian's examples, the config."""

    def __init__(self, model, data, *, loss, method, hessian, subset, classes, warn):
        if not isinstance(model, nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UsageError("the model has no trainable parameters: nothing to take the Hessian of")
        self.device = params[0].device
        self.x, self.y = as_tensors(data, self.device)
        if not self.x.is_floating_point():
            raise UsageError(f"the inputs must be floating point, not {self.x.dtype}")
        self.x = self.x.to(params[0].dtype)
        if not bool(torch.isfinite(self.x).all()):
            raise UsageError("the inputs hold NaN or infinite values; a Hessian of them is not defined")
        self.params = params
        outputs = _logits(model, self.x)
        if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
            raise UsageError(f"classes={classes!r} must be a positive number (None: the model's outputs, {outputs})")
        self.classes = outputs if classes is None else classes
        if isinstance(loss, str):
            _check_labels(loss, self.y, outputs, self.classes)
        self.loss_fn = _loss(loss, self.classes)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.hcfg = hessian_of(method, hessian, model)
        self.hx, self.hy, self.subset = self.x, self.y, None
        subset = self.hcfg.subset if subset is None else subset  # the argument, else hessian.subset
        if subset is not None:
            if not isinstance(subset, int) or isinstance(subset, bool) or not 1 <= subset:
                raise UsageError(f"subset={subset!r} must be a positive number of examples (None: all of them)")
            if subset > len(self.y):
                raise UsageError(f"subset={subset} is more than the {len(self.y)} examples given")
            if subset < len(self.y):  # a fixed seeded subset, as sane-run's hessian.subset draws it
                gen = torch.Generator().manual_seed(int(self.hcfg.seed))
                idx = torch.randperm(len(self.y), generator=gen)[:subset].sort().values.to(self.device)
                self.hx, self.hy, self.subset = self.x[idx], self.y[idx], subset
        if int(self.hcfg.k) > n_parameters(model):
            raise UsageError(f"hessian's k={self.hcfg.k} is more than the model's {n_parameters(model)} parameters")
        self.warn, self.warned = warn, set()

    def check_test(self, model, test: Data) -> tuple[torch.Tensor, torch.Tensor]:
        """The test examples on the model's device and dtype, checked as the data are."""
        x, y = as_tensors(test, self.device)
        x = x.to(self.x.dtype)
        if tuple(x.shape[1:]) != tuple(self.x.shape[1:]):
            raise UsageError(f"test_data's inputs have shape {tuple(x.shape[1:])} per example, the data's "
                             f"{tuple(self.x.shape[1:])}")  # fmt: skip
        if self.loss_name in LOSSES:
            _check_labels(self.loss_name, y, self.classes, self.classes)
        return x, y

    def checkpoint(self, model, step: int, kind: str, optimizer) -> Curvature:
        start = time.perf_counter()
        threshold = threshold_of(optimizer, self.params)
        if optimizer is not None and threshold.why and threshold.why not in self.warned:
            self.warned.add(threshold.why)
            self.warn(f"the sharpness ratio is left empty: {threshold.why}")
        with eval_mode(model):  # each module back in its own mode after
            result = measure(model, self.loss_fn, self.hx, self.hy, self.hcfg)
            lambda_max_train = None
            if self.subset is not None:
                lambda_max_train = top_eigenvalue(model, self.loss_fn, self.x, self.y, self.hcfg)
            sharpness = None
            if threshold.preconditioner is not None:
                sharpness = float("nan")
                diagonal = threshold.preconditioner(optimizer, self.params)
                if diagonal is not None and all(bool(torch.isfinite(d).all()) for d in diagonal):
                    sharpness = preconditioned_sharpness(model, self.loss_fn, self.x, self.y, self.hcfg, diagonal,
                                                         threshold.weight_decay)  # fmt: skip
        row = checkpoint_row(
            step=int(step), kind=kind, lr=threshold.lr, result=result, hcfg=self.hcfg, n_params=n_parameters(model),
            subset=len(self.hy), threshold=threshold.value, lambda_max_train=lambda_max_train,
            preconditioned_sharpness=sharpness, seconds=time.perf_counter() - start,
        )  # fmt: skip
        return Curvature(row, result.eigenvalues, result.eigenvectors, result.layers, dict(result.arrays))


def measure_curvature(
    model: nn.Module,
    data: Data,
    *,
    loss: str | LossFn = "cross_entropy",
    method: str = "auto",
    hessian: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    subset: int | None = None,
    classes: int | None = None,
    step: int = 0,
) -> Curvature:
    """One curvature checkpoint of ``model`` (in eval mode, as it is now) on ``data``: the Hessian of the mean
    ``loss`` over every example by ``method`` (exact, block_diag, block_band, lanczos, slq, auto) with the
    ``hessian`` config's keys overridden (:func:`hessian_config`), on a seeded ``subset`` of the examples if
    given (the top eigenvalue of the whole loss then beside it); the sharpness against ``optimizer``'s
    stability threshold where one is given.

    ``loss``: ``"cross_entropy"``, ``"mse"`` (0.5 squared error against one-hot labels), or a function
    (logits, labels) -> the mean loss over the batch. ``classes``: the number of classes (default: the largest
    label + 1). The numbers are those ``sane-run`` logs for the same model, data and config.

    Raises:
        UsageError: bad input (a model without parameters, data that are not examples, an unknown method, key
        or loss), in one line.
    """
    if not isinstance(step, int | np.integer) or isinstance(step, bool) or step < 0:
        raise UsageError(f"step={step!r} must be a whole number >= 0")
    measurer = _Measurer(model, data, loss=loss, method=method, hessian=hessian, subset=subset, classes=classes,
                         warn=log.warning)  # fmt: skip
    return measurer.checkpoint(model, step, "scheduled", optimizer)


class CurvatureProbe:
    """A run folder written from the caller's own training loop, in ``sane-run``'s layout, so that
    ``sane-report`` reads it beside sane-run's: :meth:`measure` writes a curvature checkpoint (hessian.csv,
    layers.csv, spectra/step_<step>.npz), :meth:`log_metrics` a metrics.csv row, :meth:`close` the final
    summary.json (also on leaving a ``with`` block: completed, or failed / interrupted with the error).

    ``model``, ``data``, ``loss``, ``method``, ``hessian``, ``subset`` and ``classes`` as for
    :func:`measure_curvature`; ``optimizer`` (optional) gives each checkpoint its stability threshold, read
    from it at that step; ``test_data`` (optional) the test columns of metrics.csv. ``config``: entries merged
    into the config that summary.json records and the report groups runs by (e.g. ``{"seed": 1, "model":
    {"width": 64}, "dataset": {"name": "cifar10"}}``); the model's, optimiser's and loss's names and the
    optimiser's learning rate, momentum and weight decay are filled in from the objects.

    Raises:
        UsageError: as :func:`measure_curvature`, or ``run_dir`` already holds a run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        model: nn.Module,
        data: Data,
        *,
        loss: str | LossFn = "cross_entropy",
        method: str = "auto",
        hessian: Mapping[str, Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        test_data: Data | None = None,
        subset: int | None = None,
        classes: int | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        from .records.writer import RunWriter
        from .training import environment

        self.model, self.optimizer = model, optimizer
        self._measurer = _Measurer(model, data, loss=loss, method=method, hessian=hessian, subset=subset,
                                   classes=classes, warn=log.warning)  # fmt: skip
        m = self._measurer
        self.test = None if test_data is None else m.check_test(model, test_data)
        if Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise UsageError(f"{run_dir} is a file; give a folder for the run")
        if config is not None and not isinstance(config, Mapping):
            raise UsageError(f"config must be a mapping of config entries, not {type(config).__name__}")
        try:
            self.config = _run_config(model, optimizer, m, config)
        except Exception as e:  # omegaconf: a value it cannot hold
            raise UsageError(f"config: {str(e).splitlines()[0]}") from None
        started = dt.datetime.now().isoformat(timespec="seconds")
        self.summary: dict[str, Any] = {
            "status": "running", "error": None, "started": started, "command": sys.argv, "source": "sane_cli.api",
            "n_params": n_parameters(model), "n_train": len(m.y),
            "n_test": 0 if self.test is None else len(self.test[1]), "environment": environment(m.device),
            "config": self.config,
        }  # fmt: skip
        self.writer = RunWriter.create(run_dir, self.summary)
        self.dir = self.writer.dir
        self.last: dict[str, dict[str, Any]] = {}
        self.closed = False

    def measure(self, step: int, kind: str = "scheduled") -> Curvature:
        """A curvature checkpoint of the model as it is now, recorded as ``step`` (steps increase from one
        checkpoint to the next), written to the run folder; returns it."""
        self._open()
        self._after(step, "curvature")
        c = self._measurer.checkpoint(self.model, step, kind, self.optimizer)
        self.writer.log_curvature(c.row, c.eigenvalues, c.eigenvectors, c.layers, **c.arrays)
        self.last["curvature"] = c.row
        return c

    def log_metrics(self, step: int, *, epoch: float | None = None, train_loss: float | None = None) -> dict[str, Any]:
        """A metrics.csv row at ``step``: the loss and accuracy of the model (eval mode) on the data and the test
        data (empty without), ``epoch`` as given, the optimiser's current learning rate. ``train_loss``: a
        value of the caller's in place of the one computed."""
        from .training import evaluate

        self._open()
        self._after(step, "metrics")
        m = self._measurer
        with eval_mode(self.model):  # each module back in its own mode after
            tr_loss, tr_acc = evaluate(self.model, m.loss_fn, m.x, m.y)
            te_loss, te_acc = (float("nan"),) * 2 if self.test is None else evaluate(self.model, m.loss_fn, *self.test)
        lr = float("nan") if self.optimizer is None else float(self.optimizer.param_groups[0]["lr"])
        row = {"step": int(step), "epoch": float("nan") if epoch is None else epoch,
               "train_loss": tr_loss if train_loss is None else float(train_loss), "train_acc": tr_acc,
               "test_loss": te_loss, "test_acc": te_acc, "lr": lr}  # fmt: skip
        self.writer.log_metrics(row)
        self.last["metrics"] = row
        return row

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """summary.json's final entries (the latest metrics and curvature as final_<column>) and status
        (completed, converged, diverged, failed, interrupted); the folder released. Closing twice does
        nothing."""
        if self.closed:
            return
        if status not in STATUSES or status == "running":
            raise UsageError(f"status={status!r} must be one of {', '.join(s for s in STATUSES if s != 'running')}")
        self.closed = True
        final = {f"final_{k}": v for k, v in self.last.get("metrics", {}).items() if k not in ("lr", "epoch")}
        if "curvature" in self.last:
            final.update({f"final_{k}": self.last["curvature"][k] for k in FINAL_COLUMNS})
            final["final_curvature_step"] = self.last["curvature"]["step"]
        steps = max([int(r["step"]) for r in self.last.values()], default=0)
        self.summary.update(status=status, error=error, steps_done=steps, finished=dt.datetime.now().isoformat(
            timespec="seconds"), **final)  # fmt: skip
        try:
            self.writer.write_summary(self.summary)
        finally:
            self.writer.close()

    def _after(self, step: int, table: str) -> None:
        """``step`` is a whole number >= 0 after the last row of ``table`` (curvature, metrics)."""
        if not isinstance(step, int | np.integer) or isinstance(step, bool) or step < 0:
            raise UsageError(f"step={step!r} must be a whole number >= 0")
        if table in self.last and int(step) <= int(self.last[table]["step"]):
            raise UsageError(f"step {step} comes after step {self.last[table]['step']}: each {table} row's step must "
                             "be larger than the one before")  # fmt: skip

    def _open(self) -> None:
        if self.closed:
            raise UsageError(f"{self.dir}: the probe is closed; open a new CurvatureProbe on another folder")

    def __enter__(self) -> CurvatureProbe:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None or (isinstance(error, SystemExit) and error.code in (0, None)):  # sys.exit(0): a success
            self.close("completed")
        elif isinstance(error, KeyboardInterrupt):
            self.close("interrupted", "KeyboardInterrupt")
        else:
            self.close("failed", f"{type(error).__name__}: {error}")


def _run_config(model: nn.Module, optimizer, m: _Measurer, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config summary.json records: what the objects say, then the caller's ``extra`` entries over it."""
    group = optimizer.param_groups[0] if optimizer is not None else {}
    optim = {"name": type(optimizer).__name__.lower() if optimizer is not None else None,
             "lr": group.get("lr"), "momentum": group.get("momentum"),
             "weight_decay": group.get("weight_decay"), "batch_size": None}  # fmt: skip
    config = {
        "model": {"name": name if (name := _model_name(model)) != "custom" else type(model).__name__},
        "optim": {k: (float(v) if isinstance(v, int | float) and k != "name" else v) for k, v in optim.items()},
        "dataset": {"name": "custom"}, "loss": m.loss_name, "seed": None,
        "hessian": OmegaConf.to_container(m.hcfg, resolve=True),
    }  # fmt: skip
    if extra:
        config = OmegaConf.to_container(OmegaConf.merge(config, dict(extra)), resolve=True)
    return config
