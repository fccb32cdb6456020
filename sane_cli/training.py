"""The training loop: data + model -> optimiser steps -> metrics and curvature checkpoints -> records.

``train(cfg, run_dir)`` is the whole run; the ``sane-run`` command only composes the config and calls it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .basins import SpikeDetector
from .config import UsageError, check_against_data, validate
from .curvature import loss_function
from .data import Data, load_data
from .methods import measure, top_eigenvalue
from .models import build_model, n_parameters
from .optim import build_optimizer, full_batch, stability_threshold
from .records import RunWriter

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """A stop by signal (SIGTERM, what schedulers and `timeout` send; SIGINT, Ctrl-C), raised in the training
    loop so that the run records where it stopped. ``signum`` is the signal, ``step`` the step it stopped at
    (set by :func:`train`)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, None


@contextlib.contextmanager
def _stop_on_sigterm():
    """While active (in the main thread, where Python delivers signals), SIGTERM raises :class:`Interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' is invalid: no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def total_steps(cfg: DictConfig, n_train: int) -> int:
    """Optimiser steps of the run: ``steps``, or ``epochs`` passes over the training set."""
    if cfg.get("epochs") is None:
        return int(cfg.steps)
    per_epoch = 1 if full_batch(cfg.optim) else n_train // int(cfg.optim.batch_size)  # ragged end dropped
    return int(cfg.epochs) * per_epoch


def checkpoint_steps(every: int, total: int) -> list[int]:
    """Steps with a curvature checkpoint: 0, every, 2*every, ... and always the last step."""
    return sorted(set(range(0, total + 1, every)) | {total})


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
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


class _Batches:
    """Training batches: the whole set for GD; seeded shuffles without replacement for SGD."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int):
        self.x, self.y, self.n = x, y, len(y)
        self.batch_size = self.n if batch_size is None else int(batch_size)
        self.gen = torch.Generator().manual_seed(seed + 1)  # independent of the init and Hessian-subset draws
        self.order, self.pos = None, self.n

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size >= self.n:
            return self.x, self.y
        if self.pos + self.batch_size > self.n:  # drop the ragged end so every step sees batch_size examples
            self.order, self.pos = torch.randperm(self.n, generator=self.gen).to(self.x.device), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.x[idx], self.y[idx]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
) -> tuple[float, float]:
    """Mean loss and accuracy of the model (eval mode) on (x, y)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = model(x[i : i + chunk])
        total_loss += float(loss_fn(out, y[i : i + chunk])) * len(out)
        correct += int((out.argmax(1) == y[i : i + chunk]).sum())
    model.train(was_training)
    return total_loss / len(y), correct / len(y)


def train(cfg: DictConfig, run_dir: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Train the model described by ``cfg``, logging metrics and curvature checkpoints into ``run_dir``.

    Returns the summary written to ``run_dir/summary.json``. A diverged run (non-finite training loss, or
    above ``max_loss``) stops early with status ``diverged`` and returns normally; any other failure is
    recorded with status ``failed`` (or ``interrupted``) and re-raised.

    Args:
        cfg: a composed run config (see conf/config.yaml); validated here before any work.
        run_dir: the run folder; created if needed, must not already hold a run.
        progress: show a progress bar over the steps; None shows it only on a terminal.
    """
    cfg = validate(cfg.copy())
    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.in_dim, data.n_classes).to(device)
    n_params = n_parameters(model)
    check_against_data(cfg, len(data.y_train), n_params)

    writer = RunWriter(run_dir)
    started = time.time()
    summary: dict[str, Any] = {
        "status": "running",
        "error": None,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv,
        "n_params": n_params,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "environment": environment(device),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    writer.write_summary(summary)
    log.info(
        "%s: %d train / %d test examples; %s depth %d width %d (%d parameters); %s lr %g on %s",
        data.name, len(data.y_train), len(data.y_test), cfg.model.name, cfg.model.depth, cfg.model.width,
        n_params, cfg.optim.name, cfg.optim.lr, device,
    )  # fmt: skip
    where = {"step": 0}  # the training loop's step, for a record of where an interruption stopped it
    try:
        with _stop_on_sigterm():
            summary.update(_loop(cfg, data, model, device, writer, progress, where))
    except KeyboardInterrupt as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        stop.step = where["step"]
        summary.update(status="interrupted", error=f"{stop} at step {stop.step}", steps_done=stop.step)
        raise stop from None
    except Exception as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        log.exception("run failed")
        raise
    finally:
        summary["wall_seconds"] = round(time.time() - started, 3)
        writer.write_summary(summary)
        writer.close()
    log.info("run %s after %.1fs: %s", summary["status"], summary["wall_seconds"], writer.dir)
    return summary


def _loop(cfg, data: Data, model, device, writer: RunWriter, progress: bool | None, where: dict) -> dict[str, Any]:
    loss_fn = loss_function(cfg.loss, data.n_classes)
    lr = float(cfg.optim.lr)
    opt = build_optimizer(model.parameters(), cfg.optim)
    threshold = stability_threshold(cfg.optim)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    # the Hessian of the training loss itself, unless the user asks for a subset (then lambda_max_train too)
    subset = cfg.hessian.subset is not None and int(cfg.hessian.subset) < len(y_train)
    hx, hy = (x_train, y_train)
    if subset:
        hx, hy = (t.to(device) for t in data.hessian_subset(int(cfg.hessian.subset), int(cfg.seed)))
    batch_size = None if full_batch(cfg.optim) else cfg.optim.batch_size
    batches = _Batches(x_train, y_train, batch_size, int(cfg.seed))
    steps = total_steps(cfg, len(y_train))
    curvature_at = set(checkpoint_steps(int(cfg.hessian.every), steps))
    hcfg = cfg.hessian
    n_params = n_parameters(model)
    last: dict[str, Any] = {}

    def log_metrics(step: int, train_loss: float | None = None) -> dict[str, Any]:
        tr_loss, tr_acc = evaluate(model, loss_fn, x_train, y_train)
        te_loss, te_acc = evaluate(model, loss_fn, x_test, y_test)
        row = {
            "step": step, "epoch": round(step * batches.batch_size / batches.n, 4),
            "train_loss": tr_loss if train_loss is None else train_loss,
            "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc, "lr": lr,
        }  # fmt: skip
        writer.log_metrics(row)
        return row

    measured: set[int] = set()

    def curvature(step: int, kind: str = "scheduled", net: torch.nn.Module | None = None) -> dict[str, Any]:
        net = model if net is None else net
        start = time.perf_counter()
        result = measure(net, loss_fn, hx, hy, hcfg, threshold)
        row = {
            "step": step, "lr": lr, "method": result.method, "dtype": result.dtype, "n_params": n_params,
            "subset": len(hy), "alpha": hcfg.alpha, "rho": hcfg.rho, "k": hcfg.k, "eig_mode": hcfg.eig_mode,
            **result.row, "lambda_max_train": result.row["lambda_max"], "kind": kind,
        }  # fmt: skip
        if subset:  # the sharpness that the optimiser meets is that of the whole training loss
            row["lambda_max_train"] = top_eigenvalue(net, loss_fn, x_train, y_train, hcfg)
            row["sharpness_ratio"] = row["lambda_max_train"] / threshold
        row["seconds"] = round(time.perf_counter() - start, 4)
        writer.log_curvature(row, result.eigenvalues, result.eigenvectors, **result.arrays)
        measured.add(step)
        if cfg.save_checkpoint and net is model:
            writer.save_checkpoint({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()})
        log.info(
            "step %d/%d %scurvature: lambda_max %.4g%s (threshold %.4g), N_eff %.4g, SANE %.4g, trace %.4g [%.1fs]",
            step, steps, "" if kind == "scheduled" else kind.replace("_", "-") + " ", row["lambda_max"],
            f" on {len(hy)} examples, {row['lambda_max_train']:.4g} on the training set" if subset else "",
            threshold, row["n_eff"], row["sane"], row["trace"], row["seconds"],
        )  # fmt: skip
        return row

    # hessian.on_spike: the parameters before the latest step are kept, so that when a step's loss jumps
    # the state just before it can be measured; a post_spike checkpoint follows spike_after steps later
    detector = SpikeDetector(float(hcfg.spike_threshold))
    # (full-batch GD only: a mini-batch loss jumps from batch to batch without any change of basin)
    on_spike = bool(hcfg.on_spike) and int(hcfg.spike_max) > 0 and full_batch(cfg.optim)
    previous = [p.detach().clone() for p in model.parameters()] if on_spike else []
    spikes, post_spike_at = 0, set()

    status = "completed"
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    bar = tqdm(total=steps, desc="training", unit="step", disable=disable, file=sys.stderr, dynamic_ncols=True)
    with logging_redirect_tqdm(), bar:  # log lines print above the bar rather than through it
        for step in range(steps + 1):
            where["step"] = step
            if step in curvature_at:
                last["curvature"] = curvature(step)
            elif step in post_spike_at and step not in measured:
                last["curvature"] = curvature(step, "post_spike")
            if step % int(cfg.log_every) == 0 or step == steps:
                last["metrics"] = log_metrics(step)
                bar.set_postfix(
                    loss=f"{last['metrics']['train_loss']:.4g}", test_acc=f"{last['metrics']['test_acc']:.3f}"
                )
            if step == steps:
                break
            xb, yb = batches.next()
            model.train()
            loss = loss_fn(model(xb), yb)
            loss_value = loss.item()
            writer.log_step_loss(step, loss_value)
            if detector.update(loss_value) and on_spike and spikes < int(hcfg.spike_max) and step > 0:
                spikes += 1
                if step - 1 not in measured:
                    curvature(step - 1, "pre_spike", _with_parameters(model, previous))
                if step + int(hcfg.spike_after) <= steps:
                    post_spike_at.add(step + int(hcfg.spike_after))
            if on_spike:
                torch._foreach_copy_(previous, [p.detach() for p in model.parameters()])
            if not torch.isfinite(loss) or loss_value > float(cfg.max_loss):
                status = "diverged"
                last["metrics"] = log_metrics(step, train_loss=loss_value)
                log.warning(
                    "diverged at step %d: training loss %.4g (max_loss %g); stopping this run",
                    step,
                    loss_value,
                    cfg.max_loss,
                )
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    final = {f"final_{k}": v for k, v in last.get("metrics", {}).items() if k not in ("lr", "epoch", "seconds")}
    for key in (
        "lambda_max",
        "lambda_max_train",
        "lambda_min",
        "trace",
        "n_eff",
        "sane",
        "stability_threshold",
        "sharpness_ratio",
    ):
        if "curvature" in last:
            final[f"final_{key}"] = last["curvature"][key]
    if "curvature" in last:
        final["final_curvature_step"] = last["curvature"]["step"]
    return {"status": status, "steps_done": step, "steps_planned": steps, "spikes_measured": spikes, **final}


def _with_parameters(model: torch.nn.Module, parameters: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding ``parameters`` (the state before the latest step)."""
    import copy

    net = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(net.parameters(), parameters, strict=True):
            p.copy_(q)
    return net
