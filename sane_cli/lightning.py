"""A PyTorch Lightning callback that measures the curvature of a LightningModule's training loss as it trains,
into a run folder that ``sane-report`` reads (the ``lightning`` extra: ``pip install "sane-run[lightning]"``).

    from sane_cli.lightning import SaneCallback

    trainer = Trainer(max_epochs=20, callbacks=[SaneCallback("outputs/lit/run1", every_n_epochs=2)])
    trainer.fit(module, datamodule)

At the start of training, every ``every_n_steps`` optimiser steps or ``every_n_epochs`` epochs, and at the end,
a checkpoint of the Hessian of the mean ``loss`` of ``module(x)`` over the training set (the training
dataloader's dataset, read in order without shuffling or a distributed sampler, so the whole set on every
strategy; or the ``data`` given; or a seeded ``subset`` of either) is written as sane-run writes one
(:class:`sane_cli.api.CurvatureProbe`), with a metrics.csv row (loss and accuracy on those examples and on
``test_data`` if given), and its lambda_max, trace, N_eff, SANE and sharpness ratio are logged to the
trainer's logger as ``sane/<name>``. The sharpness is read against the threshold of the trainer's first
optimiser (:func:`sane_cli.api.stability_threshold`).

With several processes (DDP and the like) the measure runs on rank 0 alone while the others wait at their next
collective; a checkpoint longer than the strategy's timeout (torch.distributed's default: 30 minutes) needs a
``subset`` or a longer timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - the extra not installed
    raise ImportError(
        "sane_cli.lightning needs PyTorch Lightning: pip install 'sane-run[lightning]' (or pip install lightning)"
    ) from e

LOGGED = ("lambda_max", "trace", "n_eff", "sane", "sharpness_ratio")


class SaneCallback(Callback):
    """Curvature checkpoints of the module's training loss into ``run_dir`` (see the module docstring).

    Args:
        run_dir: the run folder to write (refused where it already holds a run).
        every_n_steps / every_n_epochs: when to measure, beside the start and the end (at most one of them; by
            default every epoch).
        data: the examples to measure on, a pair of tensors or a DataLoader (default: the training dataloader's
            dataset, in order).
        subset: measure on a seeded draw of this many of them (the row's ``subset`` says how many).
        test_data: examples for metrics.csv's test columns.
        loss, method, hessian, classes, config: as for :class:`sane_cli.api.CurvatureProbe`.
        log_to_logger: also log the measures to the trainer's logger.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        data: Any = None,
        subset: int | None = None,
        test_data: Any = None,
        loss: Any = "cross_entropy",
        method: str = "auto",
        hessian: Mapping[str, Any] | None = None,
        classes: int | None = None,
        config: Mapping[str, Any] | None = None,
        log_to_logger: bool = True,
    ):
        if every_n_steps is not None and every_n_epochs is not None:
            raise UsageError("give every_n_steps or every_n_epochs, not both")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UsageError(f"{name}={value!r} must be a positive whole number")
        self.run_dir, self.data, self.subset, self.test_data = Path(run_dir), data, subset, test_data
        self.every_n_steps = every_n_steps
        self.every_n_epochs = 1 if every_n_steps is None and every_n_epochs is None else every_n_epochs
        from .api import hessian_of

        hessian_of(method, hessian)  # a bad method, key or value: refused before training
        if (Path(run_dir) / "summary.json").exists():  # so is a folder that holds a run already
            raise UsageError(f"{run_dir} already holds a run (summary.json); choose another folder for this fit")
        self.options = dict(loss=loss, method=method, hessian=hessian, classes=classes)
        self.config, self.log_to_logger = dict(config or {}), log_to_logger
        self.probe = None
        self.measured: int | None = None  # the last step measured

    def _examples(self, trainer):
        """The data given, or the training dataloader's dataset read in order."""
        if self.data is not None:
            return self.data
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise UsageError("SaneCallback could not find the training dataloader's dataset (several dataloaders?); "
                             "give the examples to measure on: SaneCallback(..., data=(x, y))")  # fmt: skip
        return torch.utils.data.DataLoader(dataset, batch_size=getattr(loader, "batch_size", None) or 256)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from .api import CurvatureProbe

        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        config = {"trainer": {"max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs,
                              "strategy": type(trainer.strategy).__name__}, **self.config}  # fmt: skip
        self.probe = CurvatureProbe(self.run_dir, pl_module, self._examples(trainer), optimizer=optimizer,
                                    test_data=self.test_data, subset=self.subset, config=config,
                                    **self.options)  # fmt: skip
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)
        if self.probe is not None:
            self.probe.close("completed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.probe is not None:
            interrupted = isinstance(exception, KeyboardInterrupt)
            self.probe.close("interrupted" if interrupted else "failed", f"{type(exception).__name__}: {exception}")

    def _measure(self, trainer, pl_module) -> None:
        """A checkpoint at the trainer's global step, once per step, on rank 0."""
        step = int(trainer.global_step)
        if self.probe is None or self.probe.closed or self.measured == step:
            return
        self.measured = step
        c = self.probe.measure(step)
        self.probe.log_metrics(step, epoch=_passes(trainer, step))
        if self.log_to_logger and trainer.logger is not None:
            trainer.logger.log_metrics({f"sane/{k}": float(c.row[k]) for k in LOGGED}, step=step)


def _passes(trainer, step: int) -> float:
    """metrics.csv's epoch: the passes over the training set at ``step`` (optimiser steps over the steps of an
    epoch), or the trainer's epoch where its dataloader has no length."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches < 1:
        return float(trainer.current_epoch)
    return round(step / max(1, batches // max(1, int(trainer.accumulate_grad_batches))), 4)
