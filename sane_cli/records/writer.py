"""The writer of a run folder: :meth:`RunWriter.create` claims a new folder, :meth:`RunWriter.reopen`
continues a stopped run's, cut back to what its checkpoint recorded."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .files import RESERVE, RESERVE_BYTES, CsvLog, atomic, lock, reserve_room, summary_text
from .schema import HESSIAN_COLUMNS, LAYER_COLUMNS, LOSS_COLUMNS, METRICS_COLUMNS


class RunWriter:
    """Writes one run folder in the layout of :mod:`sane_cli.records.schema`. Opened by :meth:`create` (a new
    folder) or :meth:`reopen` (a stopped run's); the folder is locked while the writer is open, so that no second
    sane-run resumes a run that is still going."""

    @classmethod
    def create(cls, run_dir: str | Path, summary: dict[str, Any] | None = None) -> RunWriter:
        """A new run folder, claimed with its first ``summary``.

        Raises:
            UsageError: the folder already holds a run.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # room for the last summary first (a run that could not record its end is not started), under a name of
        # this process's own until the folder is claimed
        reserve = run_dir / f"{RESERVE}.{os.getpid()}.tmp"
        _keep_room(reserve)
        # claimed atomically, and whole: summary.json is linked into place only if no file has that name, so of
        # two runs started into one folder the second is refused, and a kill leaves a readable claim
        tmp = run_dir / f".summary.json.{os.getpid()}.tmp"
        try:
            try:
                tmp.write_text(summary_text(summary or {"status": "running"}))
            except OSError as e:  # the room kept is given up for the claim itself, then taken again
                if e.errno != errno.ENOSPC:
                    raise
                reserve.unlink()
                tmp.write_text(summary_text(summary or {"status": "running"}))
                reserve_room(reserve)
            os.link(tmp, run_dir / "summary.json")
        except FileExistsError:
            reserve.unlink(missing_ok=True)
            raise UsageError(f"{run_dir} already holds a run (summary.json); choose another output folder") from None
        except OSError as e:
            reserve.unlink(missing_ok=True)
            if e.errno != errno.ENOSPC:
                raise
            raise UsageError(no_room(run_dir)) from None
        finally:
            tmp.unlink(missing_ok=True)
        try:
            return cls(run_dir, None, reserve)
        except BaseException as e:  # claimed but not opened: the claim records why (in the room kept, now free)
            failed = {**(summary or {}), "status": "failed", "error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                atomic(run_dir / "summary.json", lambda f: f.write(summary_text(failed).encode()))
            raise

    @classmethod
    def reopen(cls, run_dir: str | Path, sizes: dict[str, int]) -> RunWriter:
        """The folder of a stopped run, each CSV cut back to the bytes its checkpoint recorded (``sizes``; {}: back
        to nothing, the run starts over), to be continued."""
        return cls(Path(run_dir), sizes)

    def __init__(self, run_dir: Path, sizes: dict[str, int] | None, reserve: Path | None = None):
        """Through :meth:`create` (``reserve``: the room it kept) or :meth:`reopen`: the folder locked, cut back
        to ``sizes`` (None: a new folder), its logs opened."""
        self.dir = run_dir
        self.tracker = None  # a sane_cli.trackers.Tracking the rows are also handed to, once written here
        self._lock = lock(self.dir)
        self._reserve, reserved = self.dir / RESERVE, False
        try:
            if sizes is not None:
                cut_back(self.dir, sizes)
            if reserve is not None:
                reserve.replace(self._reserve)
            else:
                _keep_room(self._reserve)
            reserved = True
            (self.dir / "spectra").mkdir(exist_ok=True)
            append = bool(sizes)
            self.metrics = CsvLog(self.dir / "metrics.csv", METRICS_COLUMNS, append)
            self.hessian = CsvLog(self.dir / "hessian.csv", HESSIAN_COLUMNS, append)
            self.loss = CsvLog(self.dir / "loss.csv", LOSS_COLUMNS, append)
            # a checkpoint of a version before layers.csv holds no size for it: the file starts at the resume
            self.layers = CsvLog(self.dir / "layers.csv", LAYER_COLUMNS, append and "layers.csv" in sizes)
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
        atomic(path, lambda f: np.savez(f, eigenvalues=eigenvalues, eigenvectors=eigenvectors, **arrays))
        for layer in layers:
            self.layers.write({"step": row["step"], "kind": row["kind"], **layer}, flush=False)
        self.layers.flush()
        self.hessian.write(row)
        if self.tracker is not None:
            self.tracker.curvature(row, layers)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        atomic(self.dir / "checkpoint.pt", lambda f: torch.save(state, f))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, whole (a temporary renamed onto it). On a full disk the room kept at the start is given
        up and the write tried again, so that the status of a run that failed for want of space is recorded."""
        text = summary_text(summary).encode()
        try:
            atomic(self.dir / "summary.json", lambda f: f.write(text))
        except OSError as e:
            if e.errno != errno.ENOSPC or not self._reserve.exists():
                raise
            self._reserve.unlink()
            atomic(self.dir / "summary.json", lambda f: f.write(text))

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


def _keep_room(path: Path) -> None:
    """The room a run keeps for its last record, at ``path``; on a disk without it, nothing is left there and the
    one line says so (UsageError)."""
    try:
        reserve_room(path)
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.errno != errno.ENOSPC:
            raise
        raise UsageError(no_room(path.parent)) from None


def no_room(folder: Path) -> str:
    """The one line for a run that cannot start for want of disk space in ``folder``."""
    import shutil

    free = shutil.disk_usage(folder).free
    return (f"no room for a run in {folder}: {free // 1024} KiB free on its disk, and a run keeps "
            f"{RESERVE_BYTES // 1024} KiB for its record; free some space or choose another folder")  # fmt: skip


def cut_back(folder: Path, sizes: dict[str, int]) -> None:
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
