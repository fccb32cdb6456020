"""Experiment trackers, chosen by ``logger.name``: the metrics and curvature rows of a run also sent where
users already look (TensorBoard), as they are written. Off by default (``none``).

The run folder stays the record: every row is written to its CSV first, then handed to the tracker, and a
tracker that fails (its folder unwritable, its disk full) is dropped with one warning while the run goes on.
A resumed run tells the tracker the step it resumes from, so that the rows it logs again replace the ones
logged after its checkpoint (TensorBoard's purge_step).

Adding a tracker: a class with ``metrics(row)``, ``curvature(row, layers)`` and ``close()``, built from the
config group (conf/logger/<name>.yaml), the run folder and the resume step; an entry in :data:`TRACKERS`
with the package it needs (checked before a run starts); its tests reading back what it wrote.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks
from .errors import UsageError
from .records.schema import LAYER_MEASURES

log = logging.getLogger(__name__)

# what a tracker receives of each hessian.csv row and layers.csv row: the measured values, as scalars
CURVATURE_SCALARS = (
    "lambda_max", "lambda_max_train", "lambda_min", "trace", "n_eff", "sane", "log_evidence",
    "preconditioned_sharpness", "stability_threshold", "sharpness_ratio",
)  # fmt: skip
METRIC_SCALARS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


def _scalars(row: dict[str, Any], keys) -> dict[str, float]:
    """The finite numbers of ``row`` at ``keys`` (a NaN, Adam's sharpness before its first step, is left out)."""
    out = {}
    for key in keys:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _tag(kind: str) -> str:
    """The scalars' group of a checkpoint: curvature, or curvature_pre_spike / _post_spike (their own series, so
    that a pre-spike checkpoint's earlier step does not fold the scheduled series back)."""
    return "curvature" if kind == "scheduled" else f"curvature_{kind}"


class TensorBoard:
    """Scalars in TensorBoard event files under ``logger.dir`` (default ``<run folder>/tensorboard``):
    ``train/*`` and ``test/*`` per metrics row, ``curvature/*`` per scheduled checkpoint (spike checkpoints:
    ``curvature_pre_spike/*``, ``curvature_post_spike/*``), ``layers/<measure>/<layer>`` per layer."""

    def __init__(self, cfg, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # the event file is written by a thread of TensorBoard's (from the writer's first event on); its failure
        # (a full disk) is kept and raised by the next call here, for the one warning, rather than printed by the
        # thread as a traceback
        self.failure: BaseException | None = None
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_failed
        folder = Path(cfg.dir) if cfg.get("dir") else run_dir / "tensorboard"
        try:
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_step)
        except BaseException:
            self.detach()
            raise
        self.folder = folder

    def _thread_failed(self, args) -> None:
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback is not None else []
        if any("tensorboard" in frame.filename for frame in frames):
            self.failure = args.exc_value
        else:
            self._previous_hook(args)

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def detach(self) -> None:
        """Stop watching TensorBoard's thread (the tracker is closed)."""
        if threading.excepthook == self._thread_failed:
            threading.excepthook = self._previous_hook

    def abandon(self) -> None:
        """The tracker dropped after a failure: its writer closed (its thread ended) with whatever that raises
        kept quiet, then the thread no longer watched."""
        try:
            with contextlib.suppress(Exception):
                self.writer.close()
        finally:
            self.detach()

    def metrics(self, row: dict[str, Any]) -> None:
        self._check()
        step = int(row["step"])
        for key, value in _scalars(row, METRIC_SCALARS).items():
            split, _, name = key.partition("_")
            self.writer.add_scalar(f"{split}/{name}" if key != "lr" else "train/lr", value, step)
        self.writer.flush()

    def curvature(self, row: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        self._check()
        step, group = int(row["step"]), _tag(row["kind"])
        for key, value in _scalars(row, CURVATURE_SCALARS).items():
            self.writer.add_scalar(f"{group}/{key}", value, step)
        if row["kind"] == "scheduled":
            for layer in layers:
                for key, value in _scalars(layer, LAYER_MEASURES).items():
                    self.writer.add_scalar(f"layers/{key}/{int(layer['layer'])}", value, step)
        self.writer.flush()

    def close(self) -> None:
        try:
            self.writer.close()
            self._check()
        finally:
            self.detach()


@dataclass(frozen=True)
class TrackerSpec:
    build: Callable[..., Any] | None  # (logger config, run folder, resume step) -> tracker; None: no tracker
    package: str | None = None  # the module it imports
    extra: str | None = None  # the pip extra that installs it


TRACKERS = checks.Registry("logger.name", {
    "none": TrackerSpec(None),
    "tensorboard": TrackerSpec(TensorBoard, "tensorboard", "tensorboard"),
})  # fmt: skip


def check_config(cfg) -> None:
    """The ``logger`` group's keys, and that the tracker's package is installed (before any job runs)."""
    from omegaconf import OmegaConf, open_dict

    if OmegaConf.select(cfg, "logger") is None:  # a config written before the group existed: no tracker
        with open_dict(cfg):
            cfg.logger = {"name": "none"}
    checks.choice(cfg, "logger.name", TRACKERS)
    spec = TRACKERS[cfg.logger.name]
    if cfg.logger.name == "tensorboard":
        checks.path(cfg, "logger.dir", optional=True)
    if spec.package is not None and importlib.util.find_spec(spec.package) is None:
        raise UsageError(
            f"logger={cfg.logger.name} needs the {spec.package} package, which is not installed: "
            f"pip install 'sane-run[{spec.extra}]' (or logger=none)"
        )


class Tracking:
    """The run's tracker, or none; forwards rows and drops a tracker that fails, with one warning."""

    def __init__(self, cfg, run_dir: Path, resume_step: int | None):
        self.tracker, self.name = None, cfg.name
        spec = TRACKERS[cfg.name]
        if spec.build is not None:
            self._call(lambda: setattr(self, "tracker", spec.build(cfg, run_dir, resume_step)))

    def _call(self, action) -> None:
        try:
            action()
        except Exception as e:  # the run folder is the record: a tracker never stops the run
            log.warning("logger=%s failed (%s: %s); the run goes on without it, its folder holds every row",
                        self.name, type(e).__name__, e)  # fmt: skip
            if hasattr(self.tracker, "abandon"):
                self.tracker.abandon()
            self.tracker = None

    def metrics(self, row: dict[str, Any]) -> None:
        if self.tracker is not None:
            self._call(lambda: self.tracker.metrics(row))

    def curvature(self, row: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        if self.tracker is not None:
            self._call(lambda: self.tracker.curvature(row, layers))

    def close(self) -> None:
        if self.tracker is not None:
            self._call(self.tracker.close)
