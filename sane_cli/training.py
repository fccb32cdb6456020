"""The training loop: data + model -> optimiser steps -> metrics and curvature checkpoints -> records.

``train(cfg, run_dir)`` is the whole run; the ``sane-run`` command only composes the config and calls it. The
loop (:class:`_Training`) reads top to bottom at each step: the checkpoint schedule (sane_cli.schedule), the
curvature measurement (:meth:`_Training.measure`, by sane_cli.methods, its row built by
sane_cli.measures.checkpoint_row), the metrics, the optimiser step.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, distributed
from .config import check_against_data, validate
from .data import Data, load_data
from .devices import resolve_device
from .errors import UsageError
from .losses import loss_function
from .measures import checkpoint_row
from .methods import auto_choice, long_checkpoint, measure, preconditioned_sharpness, top_eigenvalue
from .models import build_model, check_outputs, describe, n_parameters
from .optim import build_optimizer, full_batch, is_preconditioned, preconditioner, stability_threshold
from .records import FINAL_COLUMNS, RunWriter, json_default, resume_point
from .schedule import Schedule
from .signals import Interrupted, Signals
from .trackers import Tracking

log = logging.getLogger(__name__)


def total_steps(cfg: DictConfig, n_train: int) -> int:
    """Optimiser steps of the run: ``steps``, or ``epochs`` passes over the training set."""
    if cfg.get("epochs") is None:
        return int(cfg.steps)
    per_epoch = 1 if full_batch(cfg.optim) else n_train // int(cfg.optim.batch_size)  # ragged end dropped
    return int(cfg.epochs) * per_epoch


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware that produced a run, recorded in summary.json."""
    import hydra

    env = {
        "sane_run": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "hydra": hydra.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        # how OpenMP's idle threads wait (sane-run: a short spin, sane_cli.devices.short_spin)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    world = distributed.current()
    if world.size > 1:  # a data-parallel job
        env.update(ranks=world.size, ranks_per_node=world.local_size, backend=world.backend)
    return env


class _Batches:
    """Training batches: the whole set for GD; seeded shuffles without replacement for SGD.

    In a data-parallel job (x, y) is this rank's shard, the examples ``offset`` to ``offset + len(y)`` of the
    ``n`` of the training set: every rank draws the same batches of the whole set and takes the examples of its
    shard, so that the ranks together take each step that a single process takes (and a resumed run goes on
    with the same batches whatever the number of ranks)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int, n: int | None = None,
                 offset: int = 0):  # fmt: skip
        self.x, self.y, self.n, self.offset = x, y, len(y) if n is None else n, offset
        self.batch_size = self.n if batch_size is None else int(batch_size)
        self.gen = torch.Generator().manual_seed(seed + 1)  # independent of the init and Hessian-subset draws
        self.order, self.pos = None, self.n

    def next(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The next batch's examples (of this rank's shard) and their share of the batch."""
        if self.batch_size >= self.n:
            return self.x, self.y, len(self.y) / self.n
        if self.pos + self.batch_size > self.n:  # drop the ragged end so every step sees batch_size examples
            self.order, self.pos = torch.randperm(self.n, generator=self.gen).to(self.x.device), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        if len(self.y) < self.n:  # a shard: the batch's examples that it holds
            idx = idx[(idx >= self.offset) & (idx < self.offset + len(self.y))] - self.offset
        return self.x[idx], self.y[idx], len(idx) / self.batch_size


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
) -> tuple[float, float]:
    """Mean loss and accuracy of the model (eval mode) on (x, y); in a data-parallel job, over every rank's
    shard."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = model(x[i : i + chunk])
        total_loss += float(loss_fn(out, y[i : i + chunk])) * len(out)
        correct += int((out.argmax(1) == y[i : i + chunk]).sum())
    model.train(was_training)
    world, n = distributed.current(), len(y)
    if world.size > 1:
        total_loss, correct, n = world.sum(torch.tensor([total_loss, correct, n], dtype=torch.float64)).tolist()
    return total_loss / n, correct / n


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    progress: bool | None = None,
    resume: bool = False,
    on_claimed: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train the model described by ``cfg``, logging metrics and curvature checkpoints into ``run_dir``.

    Returns the summary written to ``run_dir/summary.json``. A diverged run (non-finite training loss, or
    above ``max_loss``) stops early with status ``diverged`` and returns normally; any other failure is
    recorded with status ``failed`` (or ``interrupted``) and re-raised.

    Args:
        cfg: a composed run config (see conf/config.yaml); validated here before any work.
        run_dir: the run folder; created if needed, must not already hold a run (unless ``resume``).
        progress: show a progress bar over the steps; None shows it only on a terminal.
        resume: continue the stopped run in ``run_dir`` from its checkpoint.pt
            (:func:`sane_cli.records.resume_point`); ``cfg`` must be the run's own, ``threads`` and ``device``
            aside.
        on_claimed: called once a new run has claimed ``run_dir`` (its summary.json), before any work: what
            else the folder records of how the run started (sane-run's .hydra/) is written only by the run
            that owns it.
    """
    cfg = validate(cfg.copy())
    run_dir = Path(run_dir)
    point = resume_point(run_dir, OmegaConf.to_container(cfg, resolve=True)) if resume else None
    device, data, model = _setup(cfg)
    check_outputs(model, data.input_shape, data.n_classes, cfg.model)  # before the folder is claimed
    n_params = n_parameters(model)
    check_against_data(cfg, len(data.y_train), model, data.input_shape)

    started = time.time()
    writer, summary = _open_run(cfg, run_dir, point, data, device, n_params)
    earlier_seconds = float(summary.get("wall_seconds") or 0.0)  # a resumed run's time before this start
    training, signals = None, Signals()
    with signals.installed():  # until the record is written: a further signal cannot cut its writing short
        try:  # from the claim on, whatever fails (a full disk as the .hydra files are written) is recorded
            if point is None and on_claimed is not None:
                on_claimed()
            writer.write_summary(summary)
            # a data-parallel job: the other ranks run this job with this config (and checkpoint) from here
            distributed.send_job(OmegaConf.to_container(cfg, resolve=True), None if point is None else point.checkpoint)
            log.info(
                "%s: %d train / %d test examples; %s (%d parameters); %s lr %g on %s%s",
                data.name, len(data.y_train), len(data.y_test), describe(cfg.model), n_params, cfg.optim.name,
                cfg.optim.lr, device,
                "" if point is None else f"; resumed at step {point.step or 0}",
            )  # fmt: skip
            _announce_curvature(cfg.hessian, model, n_params, cfg.hessian.subset or len(data.y_train),
                                data.input_shape)  # fmt: skip
            writer.tracker = Tracking(cfg.logger, run_dir, None if point is None else point.step or 0)
            training = _Training(cfg, data, model, device, writer, signals)
            if point is not None and point.checkpoint is not None:
                training.load_state_dict(point.checkpoint)
            summary.update(training.run(progress))
            distributed.end_job()
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            stop.step = 0 if training is None else training.step
            summary.update(status="interrupted", error=f"{stop} at step {stop.step}", steps_done=stop.step)
            raise stop from None
        except distributed.RankLost as e:  # stopped where a signal would stop it: resumable from its checkpoint
            summary.update(status="interrupted", error=f"{e} at step {training.step if training else 0}",
                           steps_done=training.step if training else 0)  # fmt: skip
            raise
        except Exception as e:
            summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            raise
        finally:
            with signals.shielded():
                summary["wall_seconds"] = round(earlier_seconds + time.time() - started, 3)
                try:
                    writer.write_summary(summary)
                finally:  # the folder released and the tracker closed whatever the disk allowed
                    writer.close()
                    if writer.tracker is not None:
                        writer.tracker.close()
    log.info("run %s after %.1fs: %s", summary["status"], summary["wall_seconds"], writer.dir)
    if signals.pending is not None:  # a signal while the ended run's record was written: stop here all the same
        stop = Interrupted(signals.pending)
        stop.step = training.step if training is not None else 0
        raise stop
    return summary


def follow_job(config: dict[str, Any], checkpoint: dict | None, prepare: Callable | None = None) -> None:
    """A rank other than 0 of a data-parallel job: the job rank 0 runs (:func:`train`), with its ``config`` and
    the ``checkpoint`` it resumes from, its shard of the examples, and no file written (rank 0 writes the run's).
    ``prepare(cfg)``: called before any work."""
    cfg = validate(OmegaConf.create(config))
    if prepare is not None:
        prepare(cfg)
    device, data, model = _setup(cfg)
    signals = Signals()
    with signals.installed():
        training = _Training(cfg, data, model, device, _NoFiles(), signals)
        if checkpoint is not None:
            training.load_state_dict(checkpoint)
        training.run(progress=False)


def _setup(cfg) -> tuple[torch.device, Data, torch.nn.Module]:
    """A run's device, data and freshly seeded model, in training's precision."""
    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    return device, data, build_model(cfg.model, data.input_shape, data.n_classes).to(device, _precision(cfg))


class _NoFiles:
    """The writer of a rank other than 0: the run folder is rank 0's alone."""

    tracker = None

    def sizes(self) -> dict[str, int]:
        return {}

    def log_metrics(self, row: dict[str, Any]) -> None:
        pass

    def log_step_loss(self, step: int, loss: float) -> None:
        pass

    def log_curvature(self, row: dict[str, Any], *args, **arrays) -> None:
        pass


def _announce_curvature(hcfg, model, n_params: int, n: int, input_shape) -> None:
    """Log the method ``auto`` chose, and warn when a checkpoint is estimated to take long."""
    method, shape = hcfg.method, tuple(input_shape)
    if method == "auto":
        method, why = auto_choice(hcfg, model, n_params, n=n, input_shape=shape)
        log.info("hessian=auto: %s at every checkpoint (%s)", method, why)
    warning = long_checkpoint(hcfg, model, method, n=n, input_shape=shape)
    if warning:
        log.warning(warning)


def _open_run(cfg, run_dir: Path, point, data: Data, device, n_params: int) -> tuple[RunWriter, dict[str, Any]]:
    """The run folder's writer and summary: a new folder claimed with its first summary, or the folder of a
    stopped run (``point``) cut back to its checkpoint, its summary marking the resume."""
    now = dt.datetime.now().isoformat(timespec="seconds")
    config = OmegaConf.to_container(cfg, resolve=True)
    if point is None:
        summary = {
            "status": "running", "error": None, "started": now, "command": sys.argv, "n_params": n_params,
            "n_train": len(data.y_train), "n_test": len(data.y_test), "environment": environment(device),
            "config": config,
        }  # fmt: skip
        return RunWriter.create(run_dir, summary), summary
    sizes = {} if point.checkpoint is None else point.checkpoint["resume"]["sizes"]  # {}: it starts over
    writer, summary = RunWriter.reopen(run_dir, sizes), point.summary
    summary.update(status="running", error=None, config=config)
    summary.pop("traceback", None)  # of an earlier failed attempt
    summary.setdefault("resumed", []).append(
        {"step": point.step or 0, "started": now, "command": sys.argv, "environment": environment(device)}
    )
    return writer, summary


RESUME_FORMAT = 1


class _Probe:
    """The curvature probe of a run: one checkpoint of the Hessian of the training loss (or of the user's subset)
    by the configured method, with the sharpness the optimiser meets against its stability threshold, written to
    hessian.csv, layers.csv and spectra/."""

    def __init__(self, cfg, data: Data, train: tuple, loss_fn, writer: RunWriter, signals: Signals, steps: int):
        """``train``: the training set's inputs and labels, already on the run's device (one copy of them there)."""
        self.cfg, self.loss_fn, self.steps, self.writer, self.signals = cfg, loss_fn, steps, writer, signals
        self.lr, self.threshold = float(cfg.optim.lr), stability_threshold(cfg.optim)
        self.x_train, self.y_train = train  # in a data-parallel job, this rank's shard (sane_cli.distributed)
        device = self.x_train.device
        # the Hessian of the training loss itself, unless the user asks for a subset (then lambda_max_train too)
        self.subset = cfg.hessian.subset is not None and int(cfg.hessian.subset) < len(data.y_train)
        self.hx, self.hy = self.x_train, self.y_train
        self.n_hessian = len(data.y_train)  # the examples of the Hessian, over every rank
        if self.subset:
            hx, hy = data.hessian_subset(int(cfg.hessian.subset), int(cfg.seed))
            shard = distributed.current().shard(len(hy))
            self.hx, self.hy, self.n_hessian = hx[shard].to(device), hy[shard].to(device), len(hy)
        # Adam's sharpness is read through its preconditioner (sane_cli.optim), kept with the parameters
        self.preconditioned = is_preconditioned(cfg.optim)

    def take(self, step: int, kind: str, net: torch.nn.Module, diagonal: list | None) -> dict[str, Any]:
        """One curvature checkpoint of ``net``, whose optimiser's preconditioner is ``diagonal``, written to the
        run folder; returns its hessian.csv row."""
        hcfg, start = self.cfg.hessian, time.perf_counter()
        result = measure(net, self.loss_fn, self.hx, self.hy, hcfg)
        # the sharpness that the optimiser meets is that of the whole training loss ...
        lambda_max_train = top_eigenvalue(net, self.loss_fn, self.x_train, self.y_train, hcfg) if self.subset else None
        sharpness = None
        if self.preconditioned:  # ... through the optimiser's preconditioner
            sharpness = float("nan")
            if diagonal is not None and all(bool(torch.isfinite(d).all()) for d in diagonal):
                sharpness = preconditioned_sharpness(net, self.loss_fn, self.x_train, self.y_train, hcfg, diagonal,
                                                     float(self.cfg.optim.weight_decay))  # fmt: skip
        row = checkpoint_row(
            step=step, kind=kind, lr=self.lr, result=result, hcfg=hcfg, n_params=n_parameters(net),
            subset=self.n_hessian, threshold=self.threshold, lambda_max_train=lambda_max_train,
            preconditioned_sharpness=sharpness, seconds=time.perf_counter() - start,
        )  # fmt: skip
        with self.signals.hold():
            self.writer.log_curvature(row, result.eigenvalues, result.eigenvectors, result.layers, **result.arrays)
        log.info(
            "step %d/%d %scurvature: lambda_max %.4g%s%s (threshold %.4g), N_eff %.4g, SANE %.4g, trace %.4g [%.1fs]",
            step, self.steps, "" if kind == "scheduled" else kind.replace("_", "-") + " ", row["lambda_max"],
            f" on {self.n_hessian} examples, {row['lambda_max_train']:.4g} on the training set" if self.subset else "",
            f", preconditioned {row['preconditioned_sharpness']:.4g}" if self.preconditioned else "",
            self.threshold, row["n_eff"], row["sane"], row["trace"], row["seconds"],
        )  # fmt: skip
        return row


class _Training:
    """One run's training loop and the state it carries from step to step: the model, optimiser, batches,
    checkpoint schedule, the parameters before the latest step (for pre-spike checkpoints), and the latest
    metrics and curvature rows (for the summary). :meth:`state_dict` is what checkpoint.pt saves so that a
    resumed run continues exactly (:meth:`load_state_dict`)."""

    def __init__(self, cfg, data: Data, model: torch.nn.Module, device, writer: RunWriter, signals: Signals):
        self.cfg, self.model, self.writer, self.signals = cfg, model, writer, signals
        self.config = json.dumps(OmegaConf.to_container(cfg, resolve=True), default=json_default)
        self.loss_fn = loss_function(cfg.loss, data.n_classes)
        self.opt = build_optimizer(model.parameters(), cfg.optim)
        # in a data-parallel job each rank holds a shard of the examples (sane_cli.distributed)
        self.world = distributed.current()
        train, test = self.world.shard(len(data.y_train)), self.world.shard(len(data.y_test))
        dtype = _precision(cfg)
        self.x_train, self.y_train = data.x_train[train].to(device, dtype), data.y_train[train].to(device)
        self.x_test, self.y_test = data.x_test[test].to(device, dtype), data.y_test[test].to(device)
        batch_size = None if full_batch(cfg.optim) else cfg.optim.batch_size
        self.batches = _Batches(self.x_train, self.y_train, batch_size, int(cfg.seed), len(data.y_train), train.start)
        self.steps = total_steps(cfg, len(data.y_train))
        self.probe = _Probe(cfg, data, (self.x_train, self.y_train), self.loss_fn, writer, signals, self.steps)
        hcfg = cfg.hessian
        # (spike checkpoints for full-batch runs only: a mini-batch loss jumps from batch to batch without any
        # change of basin)
        self.schedule = Schedule(
            self.steps, int(hcfg.every), on_spike=bool(hcfg.on_spike) and full_batch(cfg.optim),
            spike_threshold=float(hcfg.spike_threshold), spike_after=int(hcfg.spike_after),
            spike_max=int(hcfg.spike_max), at_start=bool(hcfg.get("at_start", True)),
        )  # fmt: skip
        self.n_tensors = len(list(model.parameters()))
        # the parameters (and preconditioner) at the top of the latest step, for a pre-spike checkpoint
        self.previous = [p.detach().clone() for p in model.parameters()] if self.schedule.on_spike else []
        if self.schedule.on_spike and self.probe.preconditioned:  # none before the first step: a sharpness of NaN
            self.previous += [torch.full_like(p, float("nan"), dtype=torch.float64) for p in model.parameters()]
        self.step = 0  # the next step the loop runs
        self.last: dict[str, Any] = {}  # the latest metrics and curvature rows

    def run(self, progress: bool | None) -> dict[str, Any]:
        """Train from ``self.step`` to the end (or the stop criterion, or divergence); the summary's entries.

        Each step: a stop asked for by a signal; at its top (where nothing of the state has changed yet, so a
        stop resumes here) checkpoint.pt, a pending pre-spike checkpoint and a scheduled one; the metrics where
        due, and the stop criterion; then, shielded from signals, the step itself."""
        status, cfg = "completed", self.cfg
        disable = None if progress is None else not progress  # None: a bar only on a terminal
        bar = tqdm(total=self.steps, initial=self.step, desc="training", unit="step", disable=disable,
                   file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        top = self.top()  # the state at the top of the step the loop starts with
        with logging_redirect_tqdm(), bar:  # log lines print above the bar rather than through it
            try:
                for step in range(self.step, self.steps + 1):
                    self.signals.check()
                    kind = self.schedule.due(step)
                    if kind is not None or step == 0:  # step 0: resumable from the start
                        self.save(top)
                    self.measure_pre_spike()  # found by the previous step's loss
                    if kind is not None and not self.measure_finite(step, kind):
                        status = "diverged"
                        break
                    if step % int(cfg.log_every) == 0 or step == self.steps:
                        metrics = self.log_metrics(step)
                        bar.set_postfix(loss=f"{metrics['train_loss']:.4g}", test_acc=f"{metrics['test_acc']:.3f}")
                        if step < self.steps and _stop_criterion_met(cfg.get("stop"), metrics):
                            status = "converged"
                            self.converge(step, top)
                            break
                    if step == self.steps:
                        break
                    with self.signals.hold():  # the step changes the state: a signal waits for the next step's top
                        loss, value = self.forward(step)
                        if _diverged(value, float(cfg.max_loss)):
                            status = "diverged"
                            self.diverge(step, value)
                            break
                        self.update(loss)
                        self.step = step + 1
                        top = self.top()  # every file whole up to here
                        bar.update(1)
            except BaseException as e:
                self.stopped(e, top)
        return self.results(status, step)

    def top(self) -> tuple[dict[str, Any], dict[str, int]]:
        """What checkpoint.pt needs of the top of a step beside the model and optimiser: the loop's own state
        (parameter tensors shared, never changed in place) and the bytes of each CSV then."""
        state = {"step": self.step, "last": dict(self.last), "schedule": self.schedule.snapshot()}
        return state, self.writer.sizes()

    def measure(self, step: int, kind: str) -> None:
        """A curvature checkpoint of the model as it is."""
        self.last["curvature"] = self.probe.take(step, kind, self.model, preconditioner(self.opt, self.cfg.optim))
        self.schedule.measured.add(step)

    def measure_finite(self, step: int, kind: str) -> bool:
        """:meth:`measure`, or False where it fails on a state whose training loss is not finite (a model whose
        outputs are NaN or infinite from the start: no step's loss has told the run it diverged yet), ended as
        a divergence; a failure on a finite loss is the run's failure."""
        try:
            self.measure(step, kind)
            return True
        except Exception:
            loss = evaluate(self.model, self.loss_fn, self.x_train, self.y_train)[0]
            if math.isfinite(loss):
                raise
        self.diverge(step, loss)
        return False

    def measure_pre_spike(self) -> None:
        """The curvature of the parameters kept from before a spike's step, where a spike asks for one."""
        pre = self.schedule.take_pre_spike()
        if pre is not None:
            pre_step, kept = pre
            net = _with_parameters(self.model, kept[: self.n_tensors])
            self.probe.take(pre_step, "pre_spike", net, kept[self.n_tensors :] or None)
            self.schedule.measured.add(pre_step)

    def log_metrics(self, step: int, train_loss: float | None = None) -> dict[str, Any]:
        """A metrics.csv row: the training and test loss and accuracy at ``step`` (``train_loss`` given: the
        diverged batch loss in place of the training set's); kept as the latest."""
        tr_loss, tr_acc = evaluate(self.model, self.loss_fn, self.x_train, self.y_train)
        te_loss, te_acc = evaluate(self.model, self.loss_fn, self.x_test, self.y_test)
        row = {
            "step": step, "epoch": round(step * self.batches.batch_size / self.batches.n, 4),
            "train_loss": tr_loss if train_loss is None else train_loss,
            "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc, "lr": self.probe.lr,
        }  # fmt: skip
        with self.signals.hold():
            self.writer.log_metrics(row)
        self.last["metrics"] = row
        return row

    def forward(self, step: int) -> tuple[torch.Tensor, float]:
        """The loss of ``step``'s batch before its update (to differentiate: in a data-parallel job, this rank's
        part of it), and its value, observed (:meth:`observe`)."""
        xb, yb, share = self.batches.next()
        self.model.train()
        out = self.model(xb)
        if self.world.size == 1:
            loss = self.loss_fn(out, yb)
            value = loss.item()
        else:  # the batch's mean loss is the sum of the ranks' parts (a rank may hold none of a batch)
            loss = self.loss_fn(out, yb) * share if len(yb) else out.sum() * 0.0
            value = self.world.total(loss.item())
        self.observe(step, value)
        return loss, value

    def observe(self, step: int, loss: float) -> None:
        """A step's batch loss: logged to loss.csv and watched for spikes; the parameters at this step's top are
        kept for a pre-spike checkpoint of the next."""
        self.writer.log_step_loss(step, loss)
        self.schedule.observe(step, loss, kept=lambda: [p.clone() for p in self.previous])
        if self.schedule.on_spike:
            self.keep_previous()

    def update(self, loss: torch.Tensor) -> None:
        """The optimiser step on ``loss``."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world.size > 1:  # the batch's gradient: the sum of the ranks' parts, in one message
            params = list(self.model.parameters())
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            flat = self.world.sum(torch.cat([g.reshape(-1) for g in grads]))
            for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
                p.grad = g.view_as(p)
        self.opt.step()

    def converge(self, step: int, top) -> None:
        """End the run where the stop criterion is met, with a curvature checkpoint of where it ends (and the
        state it was taken of, as at any checkpoint)."""
        if step not in self.schedule.measured:
            self.save(top)
            self.measure(step, "scheduled")
        log.info("step %d: the stop criterion %s is reached; the run ends here", step,
                 OmegaConf.to_container(self.cfg.stop))  # fmt: skip

    def diverge(self, step: int, loss: float) -> None:
        """End the run at a non-finite or too large loss, keeping the spike's checkpoint and a metrics row."""
        self.measure_pre_spike()
        self.log_metrics(step, train_loss=loss)
        log.warning("diverged at step %d: training loss %.4g (max_loss %g); stopping this run", step, loss,
                    self.cfg.max_loss)  # fmt: skip

    def stopped(self, e: BaseException, top) -> None:
        """A stop by a signal (Ctrl-C, SIGTERM) saves the state at the top of the step it came in, then ends
        the run as interrupted; any other exception is the run's failure, re-raised as it is."""
        # a signal raised inside torch's own interpreter (torch.func's decompositions) comes out as a
        # RuntimeError: a stop all the same
        if not isinstance(e, KeyboardInterrupt | distributed.RankLost) and self.signals.received is None:
            raise e
        self.save(top)
        if isinstance(e, distributed.RankLost):  # another rank stopped: resumable like a stop by signal
            raise e
        if isinstance(e, KeyboardInterrupt):
            raise e
        raise Interrupted(self.signals.received) from None

    def keep_previous(self) -> None:
        """Copy the parameters (and Adam's preconditioner) at the top of this step into ``previous``."""
        now = [p.detach() for p in self.model.parameters()]
        if self.probe.preconditioned:
            diagonal = preconditioner(self.opt, self.cfg.optim)
            now += diagonal or [torch.full_like(p, float("nan")) for p in self.previous[self.n_tensors :]]
        torch._foreach_copy_(self.previous, now)

    def results(self, status: str, step: int) -> dict[str, Any]:
        """The summary's entries: status, steps, and the final metrics and curvature (final_<column>)."""
        last = self.last
        final = {f"final_{k}": v for k, v in last.get("metrics", {}).items() if k not in ("lr", "epoch", "seconds")}
        if "curvature" in last:
            final.update({f"final_{k}": last["curvature"][k] for k in FINAL_COLUMNS})
            final["final_curvature_step"] = last["curvature"]["step"]
        return {"status": status, "steps_done": step, "steps_planned": self.steps,
                "spikes_measured": self.schedule.spikes, **final}  # fmt: skip

    def save(self, top) -> None:
        """checkpoint.pt as at the top of a step (``top``, from :meth:`top`), unless save_checkpoint is off."""
        if self.cfg.save_checkpoint and self.world.main:
            with self.signals.hold():
                self.writer.save_checkpoint(self.state_dict(*top))

    def state_dict(self, state: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
        """checkpoint.pt's content: the model and optimiser, and all a resumed run needs, as at the top of a
        step (``state``, with ``sizes``, the bytes of each CSV then)."""
        resume = {
            "format": RESUME_FORMAT,
            "step": state["step"],
            "config": self.config,  # what this state was trained with: a resumed run takes its config from here
            "sizes": sizes,  # bytes of each CSV at the top of that step: the part a resumed run keeps
            **state["schedule"],  # spikes, measured, post_spike_at, pre_spike_step, pre_spike_parameters, detector
            "last": json.dumps(state["last"], default=json_default),  # exact: floats keep all their digits
            "previous": self.previous,
            "batches": {"generator": self.batches.gen.get_state(), "order": self.batches.order,
                        "pos": self.batches.pos},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }  # fmt: skip
        return {"step": state["step"], "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "resume": resume}  # fmt: skip

    def load_state_dict(self, checkpoint: dict) -> None:
        """Put the model, optimiser, batches, schedule and RNGs back as checkpoint.pt saved them."""
        r = checkpoint["resume"]
        if r.get("format") != RESUME_FORMAT:
            raise UsageError(f"checkpoint.pt has resume format {r.get('format')}; this sane-run reads {RESUME_FORMAT}")
        self.model.load_state_dict(checkpoint["model"])
        self.opt.load_state_dict(checkpoint["optimizer"])
        device = next(self.model.parameters()).device
        self.batches.gen.set_state(r["batches"]["generator"])
        self.batches.order = None if r["batches"]["order"] is None else r["batches"]["order"].to(device)
        self.batches.pos = int(r["batches"]["pos"])
        if self.previous:
            torch._foreach_copy_(self.previous, [p.to(device) for p in r["previous"]])
        torch.set_rng_state(r["rng"]["torch"])
        if torch.cuda.is_available() and len(r["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(r["rng"]["cuda"])
        kept = r["pre_spike_parameters"]
        self.schedule.restore({**r, "pre_spike_parameters": None if kept is None else [p.to(device) for p in kept]})
        self.step, self.last = int(r["step"]), json.loads(r["last"])


def _precision(cfg) -> torch.dtype:
    """Training's dtype: the top-level ``precision`` (float32 for configs written before the key)."""
    return torch.float64 if cfg.get("precision", "float32") == "float64" else torch.float32


def _stop_criterion_met(stop, metrics: dict[str, Any]) -> bool:
    """Whether the training loss and accuracy of a metrics row meet ``stop`` (every criterion set; none set:
    never)."""
    if stop is None or (stop.get("train_loss") is None and stop.get("train_acc") is None):
        return False
    loss_ok = stop.get("train_loss") is None or metrics["train_loss"] <= float(stop.train_loss)
    acc_ok = stop.get("train_acc") is None or metrics["train_acc"] >= float(stop.train_acc)
    return loss_ok and acc_ok


def _diverged(loss: float, max_loss: float) -> bool:
    """Whether a step's batch loss ends the run: not finite, or above ``max_loss``."""
    return not math.isfinite(loss) or loss > max_loss


def _with_parameters(model: torch.nn.Module, parameters: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding ``parameters`` (the state before the latest step)."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(net.parameters(), parameters, strict=True):
            p.copy_(q)
    return net
