"""The on-disk format of a run: the one place that writes and reads it.

A run folder holds::

    .hydra/                   config.yaml (as composed), hydra.yaml, overrides.yaml (written by Hydra)
    run.log                   the log of the run (written by Hydra's logging)
    metrics.csv               one row per logged step: step, epoch (passes over the training set),
                              train_loss, train_acc, test_loss, test_acc, lr (no timings, so that the
                              same config gives the same file)
    loss.csv                  one row per optimiser step: step, loss (the loss of the batch the step was
                              taken on, before the update; for spike detection)
    hessian.csv               one row per curvature checkpoint: step, lr, method (the one that ran),
                              dtype, reorth (slq's reorthogonalisation: none, selective or full; empty
                              for other methods), n_params, subset (examples the Hessian was taken on: the whole
                              training set unless hessian.subset is set), lambda_max, lambda_max_train
                              (the top eigenvalue of the whole training loss; = lambda_max without a
                              subset), lambda_min, trace, trace_se, n_negative, n_eff, n_eff_se,
                              n_eff_bound, sane, sane_se, sane_bound (standard errors of estimates and
                              bounds on SLQ's quadrature error; 0 for exact values), log_evidence
                              (Laplace, exact method only; sane_cli.measures), weight_norm_sq (|theta|^2,
                              the squared norm of the parameters measured), alpha, rho, k,
                              eig_mode, preconditioned_sharpness (lambda_max(P^-1 H) of the training
                              loss under Adam's preconditioner P; empty for other optimisers and
                              before Adam's first step), stability_threshold (of the optimiser: 2/lr
                              for plain GD, 38/lr for Adam), sharpness_ratio (the sharpness the
                              optimiser meets over its threshold: lambda_max_train, or for Adam
                              preconditioned_sharpness, / stability_threshold), converged
                              (iterative methods), seconds, kind (scheduled, pre_spike: the state just
                              before a loss spike, post_spike)
    layers.csv                one row per layer per curvature checkpoint (hessian.layers): step, kind, layer
                              (1 = the input's), module (its name in the model), module_type, params, method
                              (exact, or slq / lanczos for a block too large for its exact build), lambda_max,
                              lambda_min, trace, trace_se, n_negative, n_eff, n_eff_se, sane (at the block's own
                              scale), sane_se, sane_net (at the whole net's scale), sane_net_se, converged: of
                              the diagonal block of the Hessian that belongs to the layer's parameters
                              (sane_cli.methods.layer_rows)
    spectra/step_<step>.npz   eigenvalues, descending: all of them (exact, block_*) or the top Ritz values
                              (lanczos, slq); eigenvectors (P, topk_vectors), as columns; slq_nodes and
                              slq_weights (probes, steps) for slq; layer_eigenvalues (each layer block's,
                              descending, one after the other) and layer_sizes, where every block was exact
    summary.json              status, final metrics, resolved config, versions, device, wall time
    checkpoint.pt             model and optimiser state at the latest curvature checkpoint (or the step a
                              signal stopped the run at), with all a resumed run needs: the step, the
                              bytes of each CSV written by then, the batch order and RNG states, the
                              spike detector's state (sane_cli.training._Training.save)

Rows are appended and flushed as they are made and summary.json is rewritten atomically, so a run that
stops for any reason keeps everything it had logged; a resumed run cuts the CSVs back to the bytes its
checkpoint recorded and appends from there. The folder is locked (flock) while a run writes it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UsageError

METRICS_COLUMNS = ["step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
HESSIAN_COLUMNS = [
    "step", "lr", "method", "dtype", "reorth", "n_params", "subset", "lambda_max", "lambda_max_train", "lambda_min",
    "trace", "trace_se", "n_negative", "n_eff", "n_eff_se", "n_eff_bound", "sane", "sane_se", "sane_bound",
    "log_evidence", "weight_norm_sq", "alpha", "rho", "k", "eig_mode", "preconditioned_sharpness",
    "stability_threshold", "sharpness_ratio", "converged", "seconds", "kind",
]  # fmt: skip
# the settings a checkpoint was measured with (hessian.alpha, .rho, .k, .eig_mode), echoed in each row
SETTING_COLUMNS = ["alpha", "rho", "k", "eig_mode"]
# what a checkpoint measured: the columns from lambda_max up to converged, its settings aside
VALUE_COLUMNS = [
    c for c in HESSIAN_COLUMNS[HESSIAN_COLUMNS.index("lambda_max") : HESSIAN_COLUMNS.index("converged")]
    if c not in SETTING_COLUMNS
]  # fmt: skip
# a run's final curvature in summary.json (final_<column>): the values without their standard errors and bounds
FINAL_COLUMNS = [c for c in VALUE_COLUMNS if not c.endswith(("_se", "_bound"))]
LOSS_COLUMNS = ["step", "loss"]
# layers.csv: a checkpoint's step and kind, then what sane_cli.methods.layer_rows measures of each layer
LAYER_COLUMNS = [
    "step", "kind", "layer", "module", "module_type", "params", "method", "lambda_max", "lambda_min", "trace",
    "trace_se", "n_negative", "n_eff", "n_eff_se", "sane", "sane_se", "sane_net", "sane_net_se", "converged",
]  # fmt: skip
CHECKPOINT_KINDS = ("scheduled", "pre_spike", "post_spike")
STATUSES = ("running", "completed", "converged", "diverged", "failed", "interrupted")
FINISHED = ("completed", "converged")  # ran to its end: all its steps, or its stop criterion
ENDED = (*FINISHED, "diverged")  # nothing left to run: a sweep started again skips them, resume= refuses them


class _CsvLog:
    """A CSV file with a fixed header, one row per call; ``append`` continues a file written before."""

    def __init__(self, path: Path, columns: list[str], append: bool = False):
        self.path, self.columns = path, columns
        self._file = open(path, "a" if append else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns)
        if not append:
            self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict[str, Any], flush: bool = True) -> None:
        missing = set(self.columns) - set(row)
        if missing:
            raise KeyError(f"{self.path.name} row lacks {sorted(missing)}")
        self._writer.writerow({c: row[c] for c in self.columns})
        if flush:
            self._file.flush()

    def size(self) -> int:
        """Bytes on disk, everything written flushed."""
        self._file.flush()
        return os.fstat(self._file.fileno()).st_size

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunWriter:
    """Writes one run folder in the layout above."""

    def __init__(
        self, run_dir: str | Path, resume_sizes: dict[str, int] | None = None, summary: dict[str, Any] | None = None
    ):
        """A new run folder, claimed with its first ``summary``, or (``resume_sizes``: the bytes of each CSV
        that a checkpoint holds) the folder of a stopped run, cut back to that checkpoint and continued. The
        folder is locked while the writer is open, so that no second sane-run resumes a run that is still
        going."""
        self.dir = Path(run_dir)
        if resume_sizes is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # claimed atomically, and whole: summary.json is linked into place only if no file has that name,
            # so of two runs started into one folder the second is refused, and a kill leaves a readable claim
            tmp = self.dir / f".summary.json.{os.getpid()}.tmp"
            try:
                tmp.write_text(_summary_text(summary or {"status": "running"}))
                os.link(tmp, self.dir / "summary.json")
            except FileExistsError:
                raise UsageError(
                    f"{self.dir} already holds a run (summary.json); choose another output folder"
                ) from None
            finally:
                tmp.unlink(missing_ok=True)
        self.tracker = None  # a sane_cli.trackers.Tracking the rows are also handed to, once written here
        self._lock = _lock(self.dir)
        self._reserve, reserved = self.dir / RESERVE, False
        try:
            if resume_sizes is not None:
                _cut_back(self.dir, resume_sizes)  # {}: back to nothing, the run starts over
            _reserve_room(self._reserve)
            reserved = True
            (self.dir / "spectra").mkdir(exist_ok=True)
            append = bool(resume_sizes)
            self.metrics = _CsvLog(self.dir / "metrics.csv", METRICS_COLUMNS, append)
            self.hessian = _CsvLog(self.dir / "hessian.csv", HESSIAN_COLUMNS, append)
            self.loss = _CsvLog(self.dir / "loss.csv", LOSS_COLUMNS, append)
            # a checkpoint of a version before layers.csv holds no size for it: the file starts at the resume
            self.layers = _CsvLog(self.dir / "layers.csv", LAYER_COLUMNS, append and "layers.csv" in resume_sizes)
        except BaseException:
            if reserved:
                self._reserve.unlink(missing_ok=True)
            os.close(self._lock)
            raise

    def sizes(self) -> dict[str, int]:
        """The bytes of each CSV, flushed: what a checkpoint taken now keeps of them."""
        return {log.path.name: log.size() for log in (self.metrics, self.hessian, self.loss, self.layers)}

    def log_metrics(self, row: dict[str, Any]) -> None:
        self.metrics.write(row)
        self.loss.flush()
        if self.tracker is not None:
            self.tracker.metrics(row)

    def log_step_loss(self, step: int, loss: float) -> None:
        self.loss.write({"step": step, "loss": loss}, flush=False)  # flushed with each metrics row

    def log_curvature(
        self,
        row: dict[str, Any],
        eigenvalues: np.ndarray,
        eigenvectors: np.ndarray,
        layers: list[dict[str, Any]] = (),
        **arrays: np.ndarray,
    ) -> None:
        """A checkpoint: its spectrum file, its layers' rows, then its hessian.csv row (so that a row there
        always has its spectrum and every layer row of its step)."""
        path = self.dir / "spectra" / f"step_{int(row['step'])}.npz"
        _atomic(path, lambda f: np.savez(f, eigenvalues=eigenvalues, eigenvectors=eigenvectors, **arrays))
        for layer in layers:
            self.layers.write({"step": row["step"], "kind": row["kind"], **layer}, flush=False)
        self.layers.flush()
        self.hessian.write(row)
        if self.tracker is not None:
            self.tracker.curvature(row, layers)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        _atomic(self.dir / "checkpoint.pt", lambda f: torch.save(state, f))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, whole (a temporary renamed onto it). On a full disk the room kept at the start is given
        up and the write tried again, so that the status of a run that failed for want of space is recorded."""
        text = _summary_text(summary).encode()
        try:
            _atomic(self.dir / "summary.json", lambda f: f.write(text))
        except OSError as e:
            if e.errno != errno.ENOSPC or not self._reserve.exists():
                raise
            self._reserve.unlink()
            _atomic(self.dir / "summary.json", lambda f: f.write(text))

    def close(self) -> None:
        """Close the logs (what a full disk kept from them is lost, the rows before it stay whole or cut at
        the end, which a reader drops) and release the folder."""
        try:
            for log in (self.metrics, self.hessian, self.loss, self.layers):
                with contextlib.suppress(OSError):
                    log.close()
            self._reserve.unlink(missing_ok=True)
        finally:
            os.close(self._lock)  # releases the lock


# keys a resumed run may change: where it runs and what else it reports to, not what it computes
MAY_DIFFER = ("threads", "device", "resume", "logger")
# keys added since 0.9, each with the value a run written before it ran with (checked as if it had been set)
ADDED_KEYS = {"hessian.layers": False, "hessian.at_start": True, "dataset.label_noise": 0.0,
              "dataset.label_noise_seed": 0}  # fmt: skip


def as_it_ran(config: dict[str, Any]) -> dict[str, Any]:
    """A run config as stored, with each of ADDED_KEYS that it lacks set to the value the run ran with."""
    out = json.loads(json.dumps(config))
    for key, value in ADDED_KEYS.items():
        parent, _, last = key.rpartition(".")
        node = config_value(out, parent) if parent else out
        if isinstance(node, dict) and last not in node:
            node[last] = value
    return out


@dataclass
class ResumePoint:
    """A stopped run that can be continued: its summary as read, and the step its checkpoint holds."""

    summary: dict[str, Any]
    step: int | None  # None: no checkpoint.pt (stopped before step 0 was saved), so the run starts over
    checkpoint: dict[str, Any] | None = None  # checkpoint.pt as read (tensors on the CPU)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json of a run folder, as a dict.

    Raises:
        UsageError: the file is missing, unreadable or not a run's summary.
    """
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
            raise ValueError("no config")
        summary["status"]  # noqa: B018 - a summary has a status
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{run_dir} holds no readable run (summary.json: {e})") from None
    return summary


def status_of(run_dir: str | Path) -> str | None:
    """The status summary.json records in ``run_dir``; None where there is no readable one."""
    try:
        return read_summary(run_dir)["status"]
    except UsageError:
        return None


def resume_point(run_dir: str | Path, config: dict[str, Any] | None = None) -> ResumePoint:
    """Check that ``run_dir`` holds a run that can be resumed and return where it resumes.

    A run stopped by a signal, killed (status still ``running``, no process holding its folder) or failed
    resumes from its checkpoint.pt; a completed or diverged run has nothing left to do. With ``config`` (a
    validated run config as a plain dict), the config must be the run's own, ``MAY_DIFFER`` aside.

    Raises:
        UsageError: naming the folder and why it cannot be resumed.
    """
    run_dir = Path(run_dir)
    if is_locked(run_dir):
        raise UsageError(
            f"{run_dir} is still being written by a running sane-run; stop it first (it saves where it got to)"
        )
    try:
        summary = read_summary(run_dir)
    except UsageError as e:
        raise UsageError(f"{e}; nothing to resume") from None
    summary["config"] = as_it_ran(summary["config"])
    status, stored = summary["status"], summary["config"]
    if status not in STATUSES or status in ENDED:  # running (killed), interrupted and failed runs resume
        raise UsageError(f"{run_dir} is a {status} run; nothing to resume")
    if not stored.get("save_checkpoint", True):
        raise UsageError(f"{run_dir} was run with save_checkpoint=false: it has no checkpoint.pt to resume from")
    header = _header(run_dir / "hessian.csv")
    if header and header != HESSIAN_COLUMNS:  # appended rows would not match its columns
        version = summary.get("environment", {}).get("sane_run", "an earlier version")
        raise UsageError(
            f"{run_dir} was written by sane-run {version}, whose hessian.csv has other columns; resume it with "
            "that version, or run it again in a new folder"
        )
    checkpoint = read_checkpoint(run_dir)
    step = None
    if checkpoint is None:
        logged = _logged(run_dir)
        if logged:  # starting over would discard them
            raise UsageError(
                f"{run_dir} has no checkpoint.pt to resume from, but holds what the run logged ({logged}); resuming "
                "would start it over and discard that: copy what you need, then run it again in a new folder"
            )
    else:
        try:
            step = int(checkpoint["resume"]["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{run_dir}/checkpoint.pt holds no valid resume state ({type(e).__name__})") from None
        trained = checkpoint_config(checkpoint)
        if trained is not None:  # the config the saved state was trained with is the run's; summary.json must agree
            trained = as_it_ran(trained)
            key = first_difference(_finite(trained), stored)  # (summary.json writes inf and nan as null)
            if key is not None:
                raise UsageError(
                    f"{run_dir}/summary.json's config disagrees with the config its checkpoint.pt was trained with "
                    f"({key}: {config_value(stored, key)!r} in summary.json, {config_value(trained, key)!r} in "
                    "checkpoint.pt); put summary.json's value back (.hydra/config.yaml holds the run's start), or "
                    "start a new run"
                )
            stored = summary["config"] = {**trained, **{k: stored[k] for k in MAY_DIFFER if k in stored}}
    if config is not None:
        key = first_difference(config, stored)
        if key is not None:
            raise UsageError(
                f"{run_dir} holds a run with another config ({key}: {config_value(stored, key)!r} there, "
                f"{config_value(config, key)!r} "
                "now); resume it with its own config, or give the new run another folder"
            )
    return ResumePoint(summary, step, checkpoint)


def checkpoint_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The run config a checkpoint.pt was trained with (saved since sane-run 0.9); None for an older one."""
    text = checkpoint.get("resume", {}).get("config")
    return None if text is None else json.loads(text)


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first key (dotted, sorted) whose value differs between two run configs, ``MAY_DIFFER`` aside; None
    if none. ``config_value(a, key)`` and ``config_value(b, key)`` are the two values."""
    changed = sorted(k for k in set(a) | set(b) if k not in MAY_DIFFER and a.get(k) != b.get(k))
    if not changed:
        return None
    key = changed[0]
    if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
        inner = first_difference(a[key], b[key])
        return f"{key}.{inner}" if inner is not None else key
    return key


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a plain config (None where it has none)."""
    for part in key.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _logged(run_dir: Path) -> str:
    """What a run folder holds of a run's results: CSV rows below their header, spectra ("" if nothing)."""
    found = []
    for name in ("metrics.csv", "hessian.csv", "loss.csv"):
        try:
            with open(run_dir / name, "rb") as f:
                rows = sum(1 for _ in f) - 1
        except OSError:
            continue
        if rows > 0:
            found.append(f"{rows} rows of {name}")
    spectra = len(list((run_dir / "spectra").glob("step_*.npz")))
    if spectra:
        found.append(f"{spectra} spectra")
    return ", ".join(found)


def _header(path: Path) -> list[str]:
    """The column names of a CSV file; [] where it is missing or empty."""
    try:
        with open(path) as f:
            line = f.readline().strip()
    except OSError:
        return []
    return line.split(",") if line else []


def read_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """checkpoint.pt of a run folder, tensors on the CPU (torch.load with weights_only: plain values and tensors,
    nothing that runs code); None when the run stopped before its first one was saved.

    Raises:
        UsageError: the file is unreadable or holds no resume state.
    """
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # stopped before step 0 was saved: nothing was computed, it starts over
        return None
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise UsageError(f"{path} is unreadable ({type(e).__name__}); the run cannot be resumed") from None
    if not isinstance(checkpoint, dict) or "resume" not in checkpoint:
        raise UsageError(f"{path} holds no resume state (written by a sane-run before 0.4)")
    return checkpoint


def _lock(folder: Path) -> int:
    """An exclusive lock on ``folder`` (flock on the folder itself, released when the process ends however it
    ends, SIGKILL included), held through the returned descriptor."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"{folder} is being written by another sane-run that is still running") from None
    return fd


def is_locked(folder: str | Path) -> bool:
    """Whether a running sane-run holds ``folder`` (a run with status ``running`` that is not locked was
    killed, and can be resumed)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _cut_back(folder: Path, sizes: dict[str, int]) -> None:
    """Cut each CSV back to the bytes a checkpoint recorded and remove what was written after it: spectra
    without a hessian.csv row, temporary files. Every row kept was whole when the checkpoint was taken."""
    for name, size in sizes.items():  # every file checked before any is cut
        path = folder / name
        have = path.stat().st_size if path.is_file() else -1
        if have < size:
            raise UsageError(
                f"{path} holds {max(have, 0)} bytes, fewer than the {size} its checkpoint.pt recorded; the run folder "
                "is damaged and cannot be resumed"
            )
    for name, size in sizes.items():
        os.truncate(folder / name, size)
    kept = set()
    if sizes:
        with open(folder / "hessian.csv", newline="") as f:
            kept = {row["step"] for row in csv.DictReader(f)}
    (folder / "spectra").mkdir(exist_ok=True)
    for path in (folder / "spectra").glob("step_*.npz"):
        if path.stem.split("_", 1)[1] not in kept:
            path.unlink()
    for tmp in [*folder.glob(".*.tmp"), *(folder / "spectra").glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)


RESERVE = ".summary.reserve"  # room on the disk kept while a run is written, for its last summary.json
RESERVE_BYTES = 256 * 1024


def _reserve_room(path: Path) -> None:
    """A file of RESERVE_BYTES, its blocks allocated, that a full disk gives back for the last summary."""
    with open(path, "wb") as f:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
                return
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise
        f.write(b"\0" * RESERVE_BYTES)


def _atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed onto it: ``path`` is the old file
    or the whole new one, never a part (a full disk or a kill mid-write leaves no temporary either)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _summary_text(summary: dict[str, Any]) -> str:
    return json.dumps(_finite(summary), indent=2, default=json_default, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as None: JSON has no Infinity or NaN (the CSVs keep such values)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return obj


def json_default(obj: Any) -> Any:
    """JSON for numpy scalars (as Python numbers) and paths (as text): ``json.dumps(..., default=json_default)``."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def checkpoint_row(
    *,
    step: int,
    kind: str,
    lr: float,
    result,
    hcfg,
    n_params: int,
    subset: int,
    threshold: float,
    lambda_max_train: float | None = None,
    preconditioned_sharpness: float | None = None,
    seconds: float,
) -> dict[str, Any]:
    """One hessian.csv row: the curvature ``result`` (a :class:`sane_cli.methods.CurvatureResult`) of ``subset``
    examples at ``step``, the settings of ``hcfg`` it was measured with, and the optimiser's side of it.

    The sharpness that the optimiser meets is ``preconditioned_sharpness`` where one is given (Adam's
    lambda_max(P^-1 H); NaN before its first step), else ``lambda_max_train``, the top eigenvalue of the whole
    training loss (given when the Hessian is of a subset; lambda_max otherwise). ``sharpness_ratio`` is it over
    the optimiser's stability ``threshold``: above 1, the optimiser is unstable along the top direction.
    """
    lambda_max_train = result.row["lambda_max"] if lambda_max_train is None else lambda_max_train
    sharpness = lambda_max_train if preconditioned_sharpness is None else preconditioned_sharpness
    row = {
        "step": step, "lr": lr, "method": result.method, "dtype": result.dtype, "n_params": n_params,
        "subset": subset, **{c: hcfg[c] for c in SETTING_COLUMNS}, **result.row,
        "lambda_max_train": lambda_max_train,
        "preconditioned_sharpness": float("nan") if preconditioned_sharpness is None else preconditioned_sharpness,
        "stability_threshold": threshold, "sharpness_ratio": sharpness / threshold, "seconds": round(seconds, 4),
        "kind": kind,
    }  # fmt: skip
    return {c: row[c] for c in HESSIAN_COLUMNS}


TEXT_COLUMNS = {"method", "dtype", "reorth", "eig_mode", "converged", "kind", "module", "module_type"}


def _checked_rows(df: pd.DataFrame, raw: bytes, file: Path) -> pd.DataFrame:
    """``df`` (read from ``raw``, the bytes of ``file``) with every numeric column as numbers, or a UsageError
    naming the file and row: every row is written whole and ends in a newline, so a file that does not was cut
    off inside its last row (whose fields could read as other numbers: "33.64" cut to "3"); a field that is
    not a number where one belongs, or a checkpoint kind that is not one, marks a damaged file too."""
    if raw and not raw.endswith(b"\n"):
        raise UsageError(f"{file}: the last row is cut off (no newline at the end); the run folder is corrupt")
    for column in df.columns:
        if column in TEXT_COLUMNS:
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UsageError(
                f"{file}: row {row + 1} has {column}={df[column].iloc[row]!r}, not a number; the run folder is corrupt"
            )
        df[column] = values
    if "kind" in df.columns and not df["kind"].isin(CHECKPOINT_KINDS).all():
        row = int(np.flatnonzero(~df["kind"].isin(CHECKPOINT_KINDS).to_numpy())[0])
        raise UsageError(f"{file}: row {row + 1} has kind={df['kind'].iloc[row]!r}; the run folder is corrupt")
    return df


def _upgrade_hessian_table(df: pd.DataFrame, summary: dict[str, Any]) -> pd.DataFrame:
    """hessian.csv of runs written by earlier versions, in today's columns: before 0.2 there was no ``kind``
    (every checkpoint was scheduled); before 0.3 the threshold was ``two_over_lr`` (plain GD's 2/lr, which
    the runs of those versions were compared with) and there was no ``lambda_max_train``: it equals
    lambda_max where the Hessian was taken on the whole training set and is unknown (NaN) otherwise."""
    if "kind" not in df.columns:
        df["kind"] = "scheduled"
    if "two_over_lr" in df.columns and "stability_threshold" not in df.columns:
        df = df.rename(columns={"two_over_lr": "stability_threshold"})
    if "lambda_max_train" not in df.columns and "lambda_max" in df.columns and "subset" in df.columns:
        whole = df["subset"] == summary.get("n_train")
        df["lambda_max_train"] = df["lambda_max"].where(whole)
    if "log_evidence" not in df.columns and "sane_se" in df.columns:  # before 0.4
        df.insert(df.columns.get_loc("sane_se") + 1, "log_evidence", np.nan)
    if "preconditioned_sharpness" not in df.columns and "stability_threshold" in df.columns:  # before 0.5
        df.insert(df.columns.get_loc("stability_threshold"), "preconditioned_sharpness", np.nan)
    if "reorth" not in df.columns and "dtype" in df.columns:  # before 0.5 (slq's was the config's)
        df.insert(df.columns.get_loc("dtype") + 1, "reorth", None)
    if "n_eff_bound" not in df.columns and "sane_se" in df.columns:  # before 0.6
        df.insert(df.columns.get_loc("n_eff_se") + 1, "n_eff_bound", np.nan)
        df.insert(df.columns.get_loc("sane_se") + 1, "sane_bound", np.nan)
    if "weight_norm_sq" not in df.columns and "log_evidence" in df.columns:  # before 0.7
        df.insert(df.columns.get_loc("log_evidence") + 1, "weight_norm_sq", np.nan)
    if set(df.columns) == set(HESSIAN_COLUMNS):
        df = df[HESSIAN_COLUMNS]
    return df


@dataclass
class Run:
    """A run folder as read back: its summary, metrics and curvature tables."""

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame
    hessian: pd.DataFrame
    losses: pd.DataFrame | None = None  # loss.csv (absent in runs made before it existed)
    layers: pd.DataFrame | None = None  # layers.csv (absent in runs made before it existed)

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def config(self) -> dict[str, Any]:
        return self.summary["config"]

    def spectrum(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(eigenvalues descending, top eigenvectors as columns) at a curvature checkpoint."""
        with self._spectrum_file(step) as f:
            return f["eigenvalues"], f["eigenvectors"]

    def _spectrum_file(self, step: int):
        """spectra/step_<step>.npz, opened (no pickled objects); a missing or unreadable one is a UsageError."""
        path = self.path / "spectra" / f"step_{int(step)}.npz"
        if not path.is_file():
            raise UsageError(f"{self.path}: no spectrum for step {step} ({path.name} is missing)")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"{path}: not a readable spectrum ({type(e).__name__}); the run folder is damaged") from e

    def spectrum_steps(self) -> list[int]:
        return sorted(int(p.stem.split("_", 1)[1]) for p in (self.path / "spectra").glob("step_*.npz"))

    def density(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(eigenvalues, weights) of the spectrum at a checkpoint as a distribution: every eigenvalue
        (weights None) for exact and block methods; SLQ's nodes with their quadrature weights (averaged
        over probes); the top Ritz values for lanczos."""
        with self._spectrum_file(step) as f:
            if "slq_nodes" in f:
                nodes, weights = f["slq_nodes"], f["slq_weights"]
                return nodes.ravel(), (weights / len(weights)).ravel()
            return f["eigenvalues"], None

    def step_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, training loss) at every optimiser step from loss.csv for full-batch runs (optim.batch_size
        null); otherwise (mini-batches, whose per-step loss is that of a batch, or runs without loss.csv) the
        full training loss at the logged steps of metrics.csv."""
        full_batch = self.config.get("optim", {}).get("batch_size") is None
        if full_batch and self.losses is not None and len(self.losses):
            return self.losses.step.to_numpy(), self.losses["loss"].to_numpy(dtype=float)
        return self.metrics.step.to_numpy(), self.metrics.train_loss.to_numpy(dtype=float)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "summary.json").is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder (one holding summary.json) at or below ``root``, sorted by path."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("summary.json") if ".hydra" not in p.parts)


# the config keys sane-report sorts, groups and labels runs by, and what each must hold (null: absent)
CONFIG_TYPES = {
    "optim.lr": "a number", "model.depth": "an integer", "model.width": "an integer", "seed": "an integer",
    "steps": "an integer", "optim.momentum": "a number", "optim.weight_decay": "a number",
    "optim.batch_size": "an integer", "dataset.name": "a name", "model.name": "a name", "optim.name": "a name",
    "model.activation": "a name", "loss": "a name", "hessian.method": "a name",
}  # fmt: skip


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "a name":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "a number" or float(value).is_integer()


def load_run(path: str | Path) -> Run:
    """Read a run folder.

    Raises:
        UsageError: naming the folder and the file, when a file is missing or unreadable.
    """
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not text (UnicodeDecodeError)
        raise UsageError(f"{path}: summary.json is missing or corrupt ({e}); not a complete run folder") from e
    if (
        not isinstance(summary, dict)
        or summary.get("status") not in STATUSES
        or not isinstance(summary.get("config"), dict)
    ):
        raise UsageError(f"{path}: summary.json lacks a valid status and config; not a sane-run run folder")
    for key, value in summary.items():
        if (
            key.startswith("final_")
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int | float))
        ):
            raise UsageError(f"{path}: summary.json has a non-numeric {key} ({value!r}); the run folder is corrupt")
    for key, kind in CONFIG_TYPES.items():
        value = config_value(summary["config"], key)
        if value is not None and not _is_kind(value, kind):
            raise UsageError(
                f"{path}: summary.json's config has {key} = {value!r}, not {kind}; the run folder is corrupt (sane-run "
                "writes no such value)"
            )
    tables = {}
    for name, columns in (("metrics", METRICS_COLUMNS), ("hessian", HESSIAN_COLUMNS), ("loss", LOSS_COLUMNS),
                          ("layers", LAYER_COLUMNS)):  # fmt: skip
        if name in ("loss", "layers") and not (path / f"{name}.csv").exists():
            tables[name] = None  # written since version 0.2 (loss) and 0.10 (layers)
            continue
        try:
            raw = (path / f"{name}.csv").read_bytes()
            df = pd.read_csv(io.BytesIO(raw))
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise UsageError(f"{path}: {name}.csv is missing or corrupt ({e})") from e
        if name == "hessian":
            df = _upgrade_hessian_table(df, summary)
        if list(df.columns) != columns:
            raise UsageError(f"{path}: {name}.csv has columns {list(df.columns)}, expected {columns}")
        tables[name] = _checked_rows(df, raw, path / f"{name}.csv")
    return Run(path, summary, tables["metrics"], tables["hessian"], tables["loss"], tables["layers"])
