"""The training loop: data + model -> optimiser steps -> metrics and curvature checkpoints -> records.

``train(cfg, run_dir)`` is the whole run; the ``sane-run`` command only composes the config and calls it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
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
from .methods import measure, preconditioned_sharpness, top_eigenvalue
from .models import build_model, describe, n_parameters
from .optim import PRECONDITIONED, build_optimizer, full_batch, preconditioner, stability_threshold
from .records import RunWriter, json_default

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """A stop by signal (SIGTERM, what schedulers and `timeout` send; SIGINT, Ctrl-C), raised in the training
    loop so that the run records where it stopped. ``signum`` is the signal, ``step`` the step it stopped at
    (set by :func:`train`)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, None


class _Signals:
    """Stops by SIGTERM and SIGINT at points from which the run can be resumed.

    While the loop measures curvature, nothing of the training state changes, so a signal raises
    :class:`Interrupted` at once and the run resumes at the top of that step. While an optimiser step changes
    the state or a file is written (``hold``), a signal is kept and raised when that is done.
    Installed in the main thread only (where Python delivers signals); a SIGINT that the shell told this
    process to ignore stays ignored.
    """

    def __init__(self):
        self.pending: int | None = None
        self.received: int | None = None  # the last signal, also when torch re-raised it as another error
        self.holding = 0  # depth of nested hold() blocks

    def _handler(self, signum, _frame):
        self.received = signum
        if self.holding:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)

    @contextlib.contextmanager
    def hold(self):
        """Signals wait while the block runs (a step, a file being written) and are raised when the outermost
        such block ends."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding:
            self.check()

    @contextlib.contextmanager
    def installed(self):
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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


def train(
    cfg: DictConfig, run_dir: str | Path, *, progress: bool | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train the model described by ``cfg``, logging metrics and curvature checkpoints into ``run_dir``.

    Returns the summary written to ``run_dir/summary.json``. A diverged run (non-finite training loss, or
    above ``max_loss``) stops early with status ``diverged`` and returns normally; any other failure is
    recorded with status ``failed`` (or ``interrupted``) and re-raised.

    Args:
        cfg: a composed run config (see conf/config.yaml); validated here before any work.
        run_dir: the run folder; created if needed, must not already hold a run (unless ``resume``).
        progress: show a progress bar over the steps; None shows it only on a terminal.
        resume: continue the stopped run in ``run_dir`` from its checkpoint.pt (:func:`resume_point`);
            ``cfg`` must be the run's own config, ``threads`` and ``device`` aside.
    """
    cfg = validate(cfg.copy())
    run_dir = Path(run_dir)
    point = resume_point(run_dir, cfg) if resume else None
    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
    n_params = n_parameters(model)
    check_against_data(cfg, len(data.y_train), model)

    started = time.time()
    now = dt.datetime.now().isoformat(timespec="seconds")
    if point is None:
        summary: dict[str, Any] = {
            "status": "running",
            "error": None,
            "started": now,
            "command": sys.argv,
            "n_params": n_params,
            "n_train": len(data.y_train),
            "n_test": len(data.y_test),
            "environment": environment(device),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        writer = RunWriter(run_dir, summary=summary)
        earlier_seconds = 0.0
    else:
        checkpoint = point.checkpoint  # on the CPU: _restore moves each part where it belongs
        writer = RunWriter(run_dir, resume_sizes={} if checkpoint is None else checkpoint["resume"]["sizes"])
        summary = point.summary
        earlier_seconds = float(summary.get("wall_seconds") or 0.0)
        summary.update(status="running", error=None, config=OmegaConf.to_container(cfg, resolve=True))
        summary.setdefault("resumed", []).append(
            {"step": point.step or 0, "started": now, "command": sys.argv,
             "environment": environment(device)}
        )  # fmt: skip
    writer.write_summary(summary)
    log.info(
        "%s: %d train / %d test examples; %s (%d parameters); %s lr %g on %s%s",
        data.name, len(data.y_train), len(data.y_test), describe(cfg.model), n_params, cfg.optim.name,
        cfg.optim.lr, device,
        "" if point is None else f"; resumed at step {point.step or 0}",
    )  # fmt: skip
    where = {"step": 0}  # the training loop's step, for a record of where an interruption stopped it
    try:
        with _Signals().installed() as signals:
            resumed = None if point is None else checkpoint
            summary.update(_loop(cfg, data, model, device, writer, progress, where, signals, resumed))
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
        summary["wall_seconds"] = round(earlier_seconds + time.time() - started, 3)
        writer.write_summary(summary)
        writer.close()
    log.info("run %s after %.1fs: %s", summary["status"], summary["wall_seconds"], writer.dir)
    return summary


@dataclass
class ResumePoint:
    """A stopped run that can be continued: its summary as read, and the step its checkpoint holds."""

    summary: dict[str, Any]
    step: int | None  # None: no checkpoint.pt (stopped before step 0 was saved), so the run starts over
    checkpoint: dict[str, Any] | None = None  # checkpoint.pt as read (tensors on the CPU)


MAY_DIFFER = ("threads", "device", "resume")  # keys a resumed run may change: where it runs, not what it computes


def resume_point(run_dir: str | Path, cfg: DictConfig | None = None) -> ResumePoint:
    """Check that ``run_dir`` holds a run that can be resumed and return where it resumes.

    A run stopped by a signal, killed (status still ``running``, no process holding its folder) or failed
    resumes from its checkpoint.pt; a completed or diverged run has nothing left to do. With ``cfg``, the
    config must be the run's own, ``threads`` and ``device`` aside.

    Raises:
        UsageError: naming the folder and why it cannot be resumed.
    """
    from .records import ENDED, HESSIAN_COLUMNS, STATUSES, is_locked

    run_dir = Path(run_dir)
    if is_locked(run_dir):
        raise UsageError(
            f"{run_dir} is still being written by a running sane-run; stop it first (it saves where it got to)"
        )
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        status = summary["status"]
        stored = summary["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{run_dir} holds no readable run (summary.json: {e}); nothing to resume") from None
    if status not in STATUSES or status in ENDED:  # running (killed), interrupted and failed runs resume
        raise UsageError(f"{run_dir} is a {status} run; nothing to resume")
    if not stored.get("save_checkpoint", True):
        raise UsageError(f"{run_dir} was run with save_checkpoint=false: it has no checkpoint.pt to resume from")
    try:
        with open(run_dir / "hessian.csv") as f:
            header = f.readline().strip()
    except OSError:
        header = ""
    if header and header.split(",") != HESSIAN_COLUMNS:  # appended rows would not match its columns
        version = summary.get("environment", {}).get("sane_run", "an earlier version")
        raise UsageError(
            f"{run_dir} was written by sane-run {version}, whose hessian.csv has other columns; resume it with "
            "that version, or run it again in a new folder"
        )
    try:
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:  # stopped before step 0 was saved: nothing was computed, it starts over
        checkpoint = None
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise UsageError(
            f"{run_dir}/checkpoint.pt is unreadable ({type(e).__name__}); the run cannot be resumed"
        ) from None
    step = None
    if checkpoint is not None:
        if not isinstance(checkpoint, dict) or "resume" not in checkpoint:
            raise UsageError(f"{run_dir}/checkpoint.pt holds no resume state (written by a sane-run before 0.4)")
        try:
            step = int(checkpoint["resume"]["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{run_dir}/checkpoint.pt holds no valid resume state ({type(e).__name__})") from None
    if cfg is not None:
        ours = OmegaConf.to_container(validate(cfg.copy()), resolve=True)  # as the run stored its own
        changed = sorted(k for k in set(ours) | set(stored) if k not in MAY_DIFFER and ours.get(k) != stored.get(k))
        if changed:
            key = changed[0]
            raise UsageError(
                f"{run_dir} holds a run with another config ({key}: {stored.get(key)!r} there, {ours.get(key)!r} "
                "now); resume it with its own config, or give the new run another folder"
            )
    return ResumePoint(summary, step, checkpoint)


@dataclass
class _State:
    """What the training loop carries from step to step besides the model, optimiser, batches and spike
    detector; with them, what checkpoint.pt saves so that a resumed run continues exactly."""

    step: int = 0  # the next step the loop runs
    spikes: int = 0  # spikes measured (at most hessian.spike_max)
    measured: set[int] = field(default_factory=set)  # steps with a curvature checkpoint
    post_spike_at: set[int] = field(default_factory=set)  # steps of post-spike checkpoints still to take
    pre_spike: tuple[int, list[torch.Tensor]] | None = None  # a pre-spike checkpoint to take: step, parameters
    last: dict[str, Any] = field(default_factory=dict)  # the latest metrics and curvature rows (for the summary)

    def copy(self) -> _State:
        """The state at the top of a step; the parameter tensors are shared (never changed in place)."""
        return _State(self.step, self.spikes, set(self.measured), set(self.post_spike_at), self.pre_spike,
                      dict(self.last))  # fmt: skip


def _loop(
    cfg, data: Data, model, device, writer: RunWriter, progress, where: dict, signals: _Signals, resumed=None
) -> dict[str, Any]:
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

    # hessian.on_spike: the parameters before the latest step are kept, so that when a step's loss jumps
    # the state just before it can be measured; a post_spike checkpoint follows spike_after steps later
    detector = SpikeDetector(float(hcfg.spike_threshold))
    # (full-batch GD only: a mini-batch loss jumps from batch to batch without any change of basin)
    on_spike = bool(hcfg.on_spike) and int(hcfg.spike_max) > 0 and full_batch(cfg.optim)
    # Adam's sharpness is read through its preconditioner (sane_cli.optim), kept with the parameters
    preconditioned = cfg.optim.name in PRECONDITIONED
    n_tensors = len(list(model.parameters()))
    previous = [p.detach().clone() for p in model.parameters()] if on_spike else []
    if on_spike and preconditioned:  # none before the first step: NaN, a sharpness of NaN
        previous += [torch.full_like(p, float("nan"), dtype=torch.float64) for p in model.parameters()]

    def keep_previous() -> None:
        """Copy the parameters (and Adam's preconditioner) at the top of this step into ``previous``."""
        now = [p.detach() for p in model.parameters()]
        if preconditioned:
            now += preconditioner(opt) or [torch.full_like(p, float("nan")) for p in previous[n_tensors:]]
        torch._foreach_copy_(previous, now)

    state = _State()
    if resumed is not None:
        state = _restore(resumed, model, opt, batches, detector, previous)

    def log_metrics(step: int, train_loss: float | None = None) -> dict[str, Any]:
        tr_loss, tr_acc = evaluate(model, loss_fn, x_train, y_train)
        te_loss, te_acc = evaluate(model, loss_fn, x_test, y_test)
        row = {
            "step": step, "epoch": round(step * batches.batch_size / batches.n, 4),
            "train_loss": tr_loss if train_loss is None else train_loss,
            "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc, "lr": lr,
        }  # fmt: skip
        with signals.hold():
            writer.log_metrics(row)
        return row

    def curvature(
        step: int, kind: str = "scheduled", net: torch.nn.Module | None = None, diagonal: list | None = None
    ) -> dict[str, Any]:
        """One checkpoint of ``net`` (the model), whose preconditioner is ``diagonal`` (the optimiser's)."""
        net = model if net is None else net
        diagonal = preconditioner(opt) if diagonal is None else diagonal
        start = time.perf_counter()
        result = measure(net, loss_fn, hx, hy, hcfg, threshold)
        row = {
            "step": step, "lr": lr, "method": result.method, "dtype": result.dtype, "n_params": n_params,
            "subset": len(hy), "alpha": hcfg.alpha, "rho": hcfg.rho, "k": hcfg.k, "eig_mode": hcfg.eig_mode,
            **result.row, "lambda_max_train": result.row["lambda_max"], "preconditioned_sharpness": float("nan"),
            "kind": kind,
        }  # fmt: skip
        if subset:  # the sharpness that the optimiser meets is that of the whole training loss
            row["lambda_max_train"] = top_eigenvalue(net, loss_fn, x_train, y_train, hcfg)
            row["sharpness_ratio"] = row["lambda_max_train"] / threshold
        if preconditioned:  # ... through the optimiser's preconditioner
            if diagonal is not None and all(bool(torch.isfinite(d).all()) for d in diagonal):
                row["preconditioned_sharpness"] = preconditioned_sharpness(
                    net, loss_fn, x_train, y_train, hcfg, diagonal, float(cfg.optim.weight_decay)
                )
            row["sharpness_ratio"] = row["preconditioned_sharpness"] / threshold
        row["seconds"] = round(time.perf_counter() - start, 4)
        with signals.hold():
            writer.log_curvature(row, result.eigenvalues, result.eigenvectors, **result.arrays)
            state.measured.add(step)
        log.info(
            "step %d/%d %scurvature: lambda_max %.4g%s%s (threshold %.4g), N_eff %.4g, SANE %.4g, trace %.4g [%.1fs]",
            step, steps, "" if kind == "scheduled" else kind.replace("_", "-") + " ", row["lambda_max"],
            f" on {len(hy)} examples, {row['lambda_max_train']:.4g} on the training set" if subset else "",
            f", preconditioned {row['preconditioned_sharpness']:.4g}" if preconditioned else "",
            threshold, row["n_eff"], row["sane"], row["trace"], row["seconds"],
        )  # fmt: skip
        return row

    def pre_spike_checkpoint() -> None:
        """The curvature of the parameters kept from before a spike's step (``state.pre_spike``)."""
        pre_step, kept = state.pre_spike
        curvature(pre_step, "pre_spike", _with_parameters(model, kept[:n_tensors]), kept[n_tensors:] or None)

    def save(top: _State, sizes: dict[str, int]) -> None:
        """checkpoint.pt: the model and optimiser, and all a resumed run needs, as at the top of a step."""
        with signals.hold():
            writer.save_checkpoint({
                "step": top.step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "resume": _resumable(top, sizes, batches, detector, previous),
            })  # fmt: skip

    status = "completed"
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    bar = tqdm(total=steps, initial=state.step, desc="training", unit="step", disable=disable, file=sys.stderr,
               dynamic_ncols=True)  # fmt: skip
    where["step"] = state.step
    top, sizes = state.copy(), writer.sizes()  # the state at the top of the step the loop starts with
    with logging_redirect_tqdm(), bar:  # log lines print above the bar rather than through it
        try:
            for step in range(state.step, steps + 1):
                signals.check()
                # from here to the optimiser step nothing of the training state changes: a stop resumes here
                is_checkpoint = step in curvature_at or (step in state.post_spike_at and step not in state.measured)
                if cfg.save_checkpoint and is_checkpoint:
                    save(top, sizes)
                if state.pre_spike is not None:  # found by the previous step's loss
                    pre_spike_checkpoint()
                    state.pre_spike = None
                if step in curvature_at:
                    state.last["curvature"] = curvature(step)
                elif is_checkpoint:
                    state.last["curvature"] = curvature(step, "post_spike")
                if step % int(cfg.log_every) == 0 or step == steps:
                    state.last["metrics"] = log_metrics(step)
                    bar.set_postfix(
                        loss=f"{state.last['metrics']['train_loss']:.4g}",
                        test_acc=f"{state.last['metrics']['test_acc']:.3f}",
                    )
                    if step < steps and _reached(cfg.get("stop"), state.last["metrics"]):
                        status = "converged"
                        if step not in state.measured:  # the curvature where the run ends
                            state.last["curvature"] = curvature(step)
                        log.info("step %d: the stop criterion %s is reached; the run ends here", step,
                                 OmegaConf.to_container(cfg.stop))  # fmt: skip
                        break
                if step == steps:
                    break
                with signals.hold():  # the step changes the state: a signal waits for the next step's top
                    xb, yb = batches.next()
                    model.train()
                    loss = loss_fn(model(xb), yb)
                    loss_value = loss.item()
                    writer.log_step_loss(step, loss_value)
                    if detector.update(loss_value) and on_spike and state.spikes < int(hcfg.spike_max) and step > 0:
                        state.spikes += 1
                        if step - 1 not in state.measured:  # measured at the top of the next step
                            state.pre_spike = (step - 1, [p.clone() for p in previous])
                        if step + int(hcfg.spike_after) <= steps:
                            state.post_spike_at.add(step + int(hcfg.spike_after))
                    if on_spike:
                        keep_previous()
                    if not torch.isfinite(loss) or loss_value > float(cfg.max_loss):
                        status = "diverged"
                        if state.pre_spike is not None:
                            pre_spike_checkpoint()
                        state.last["metrics"] = log_metrics(step, train_loss=loss_value)
                        log.warning(
                            "diverged at step %d: training loss %.4g (max_loss %g); stopping this run",
                            step, loss_value, cfg.max_loss,
                        )  # fmt: skip
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    # the next step's top, taken before a signal can stop the run there
                    where["step"] = state.step = step + 1
                    top, sizes = state.copy(), writer.sizes()  # every file whole up to here
                    bar.update(1)
        except BaseException as e:
            # a signal raised inside torch's own interpreter (torch.func's decompositions) comes out as a
            # RuntimeError: a stop all the same
            if not isinstance(e, KeyboardInterrupt) and signals.received is None:
                raise
            if cfg.save_checkpoint:
                save(top, sizes)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise Interrupted(signals.received) from None
    last = state.last
    final = {f"final_{k}": v for k, v in last.get("metrics", {}).items() if k not in ("lr", "epoch", "seconds")}
    for key in (
        "lambda_max",
        "lambda_max_train",
        "lambda_min",
        "trace",
        "n_eff",
        "sane",
        "log_evidence",
        "preconditioned_sharpness",
        "stability_threshold",
        "sharpness_ratio",
    ):
        if "curvature" in last:
            final[f"final_{key}"] = last["curvature"][key]
    if "curvature" in last:
        final["final_curvature_step"] = last["curvature"]["step"]
    return {
        "status": status, "steps_done": step, "steps_planned": steps, "spikes_measured": state.spikes, **final
    }  # fmt: skip


def _reached(stop, metrics: dict[str, Any]) -> bool:
    """Whether the training loss and accuracy of a metrics row meet ``stop`` (every criterion set; none set:
    never)."""
    if stop is None or (stop.get("train_loss") is None and stop.get("train_acc") is None):
        return False
    loss_ok = stop.get("train_loss") is None or metrics["train_loss"] <= float(stop.train_loss)
    acc_ok = stop.get("train_acc") is None or metrics["train_acc"] >= float(stop.train_acc)
    return loss_ok and acc_ok


RESUME_FORMAT = 1


def _resumable(top: _State, sizes: dict[str, int], batches: _Batches, detector: SpikeDetector, previous) -> dict:
    """The ``resume`` entry of checkpoint.pt: plain values and tensors only (read back with weights_only)."""
    return {
        "format": RESUME_FORMAT,
        "step": top.step,
        "sizes": sizes,  # bytes of each CSV at the top of that step: the part a resumed run keeps
        "spikes": top.spikes,
        "measured": sorted(top.measured),
        "post_spike_at": sorted(top.post_spike_at),
        "pre_spike_step": None if top.pre_spike is None else top.pre_spike[0],
        "pre_spike_parameters": None if top.pre_spike is None else top.pre_spike[1],
        "last": json.dumps(top.last, default=json_default),  # exact: floats are written with all their digits
        "previous": previous,
        "batches": {"generator": batches.gen.get_state(), "order": batches.order, "pos": batches.pos},
        "detector": dict(vars(detector)),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def _restore(checkpoint: dict, model, opt, batches: _Batches, detector: SpikeDetector, previous) -> _State:
    """Put the model, optimiser, batches, spike detector and RNGs back as checkpoint.pt saved them."""
    r = checkpoint["resume"]
    if r.get("format") != RESUME_FORMAT:
        raise UsageError(f"checkpoint.pt has resume format {r.get('format')}; this sane-run reads {RESUME_FORMAT}")
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    device = next(model.parameters()).device
    batches.gen.set_state(r["batches"]["generator"])
    batches.order = None if r["batches"]["order"] is None else r["batches"]["order"].to(device)
    batches.pos = int(r["batches"]["pos"])
    vars(detector).update(r["detector"])
    if previous:
        torch._foreach_copy_(previous, [p.to(device) for p in r["previous"]])
    torch.set_rng_state(r["rng"]["torch"])
    if torch.cuda.is_available() and len(r["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(r["rng"]["cuda"])
    pre = None
    if r["pre_spike_step"] is not None:
        pre = (int(r["pre_spike_step"]), [p.to(device) for p in r["pre_spike_parameters"]])
    return _State(
        step=int(r["step"]), spikes=int(r["spikes"]), measured=set(r["measured"]),
        post_spike_at=set(r["post_spike_at"]), pre_spike=pre, last=json.loads(r["last"]),
    )  # fmt: skip


def _with_parameters(model: torch.nn.Module, parameters: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding ``parameters`` (the state before the latest step)."""
    import copy

    net = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(net.parameters(), parameters, strict=True):
            p.copy_(q)
    return net
