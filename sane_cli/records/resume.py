"""Whether a stopped run can be continued, and from where: its status, its checkpoint, and its config against
the one it is resumed with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .files import csv_header, finite, is_locked
from .reader import read_checkpoint, read_summary
from .schema import ENDED, HESSIAN_COLUMNS, MAY_DIFFER, STATUSES, config_value
from .upgrade import as_it_ran


@dataclass
class ResumePoint:
    """A stopped run that can be continued: its summary as read, and the step its checkpoint holds."""

    summary: dict[str, Any]
    step: int | None  # None: no checkpoint.pt (stopped before step 0 was saved), so the run starts over
    checkpoint: dict[str, Any] | None = None  # checkpoint.pt as read (tensors on the CPU)


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
    header = csv_header(run_dir / "hessian.csv")
    if header and header != HESSIAN_COLUMNS:  # appended rows would not match its columns
        version = summary.get("environment", {}).get("sane_run", "an earlier version")
        raise UsageError(
            f"{run_dir} was written by sane-run {version}, whose hessian.csv has other columns; resume it with "
            "that version, or run it again in a new folder"
        )
    checkpoint = read_checkpoint(run_dir)
    step = None
    if checkpoint is None:
        logged = what_is_logged(run_dir)
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
            key = first_difference(finite(trained), stored)  # (summary.json writes inf and nan as null)
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
    """The run config a checkpoint.pt was trained with; None for one that predates saving it."""
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


def what_is_logged(run_dir: Path) -> str:
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
