"""Writing files so that a stopped run leaves nothing half-written: CSV logs flushed row by row, files
replaced whole (a temporary renamed onto them), room on the disk kept for the last summary.json, and the
lock that marks a folder a running sane-run is writing."""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError


class CsvLog:
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


RESERVE = ".summary.reserve"  # room on the disk kept while a run is written, for its last summary.json

RESERVE_BYTES = 256 * 1024


def reserve_room(path: Path) -> None:
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


def atomic(path: Path, write) -> None:
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


def summary_text(summary: dict[str, Any]) -> str:
    return json.dumps(finite(summary), indent=2, default=json_default, allow_nan=False) + "\n"


def finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as None: JSON has no Infinity or NaN (the CSVs keep such values)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
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


def lock(folder: Path) -> int:
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


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file; [] where it is missing or empty."""
    try:
        with open(path) as f:
            line = f.readline().strip()
    except OSError:
        return []
    return line.split(",") if line else []
