"""Reading a run folder back: summary.json, checkpoint.pt and the CSVs as tables, each checked, so that a
damaged or foreign file is a one-line UsageError naming it rather than a wrong number."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from .schema import (
    CHECKPOINT_KINDS,
    HESSIAN_COLUMNS,
    LAYER_COLUMNS,
    LOSS_COLUMNS,
    METRICS_COLUMNS,
    REPORT_KEYS,
    STATUSES,
    TEXT_COLUMNS,
    config_value,
)
from .upgrade import upgrade_hessian_table, upgrade_layer_table


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

    def full_spectrum(self, step: int) -> bool:
        """Whether the spectrum saved at a checkpoint holds every eigenvalue of its Hessian (one per parameter, as
        the exact and layer-block methods save) rather than the top Ritz values alone (lanczos, slq)."""
        n_params = self.hessian.loc[self.hessian.step == step, "n_params"]
        with self._spectrum_file(step) as f:
            return "slq_nodes" not in f and len(n_params) > 0 and f["eigenvalues"].size == n_params.iloc[0]

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


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "a name":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "a number" or float(value).is_integer()


GROUP_KEYS = ("dataset", "model", "optim", "hessian")  # the config's groups that the report reads keys of


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
    for group in GROUP_KEYS:  # a config group is a mapping wherever sane-run wrote one
        if group in summary["config"] and not isinstance(summary["config"][group], dict):
            raise UsageError(
                f"{path}: summary.json's config has {group} = {summary['config'][group]!r}, not a mapping of its keys; "
                "the run folder is corrupt (sane-run writes no such value)"
            )
    for key, kind in REPORT_KEYS.values():
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
            df = upgrade_hessian_table(df, summary)
        if name == "layers":
            df = upgrade_layer_table(df)
        if list(df.columns) != columns:
            raise UsageError(f"{path}: {name}.csv has columns {list(df.columns)}, expected {columns}")
        tables[name] = checked_rows(df, raw, path / f"{name}.csv")
    if tables["layers"] is not None:
        tables["layers"] = _matched_layers(tables["layers"], tables["hessian"], path / "layers.csv")
    return Run(path, summary, tables["metrics"], tables["hessian"], tables["loss"], tables["layers"])


def _matched_layers(layers: pd.DataFrame, hessian: pd.DataFrame, file: Path) -> pd.DataFrame:
    """layers.csv's rows checked against hessian.csv's checkpoints. A checkpoint's layer rows are written before
    its hessian.csv row, so rows after the last checkpoint that has one are a checkpoint a stop cut short: left
    out. Otherwise each checkpoint (step and kind) in layers.csv is one of hessian.csv's with the same layers as
    the others, and every checkpoint from the first with layer rows on has them (layers.csv starts later in a
    run resumed from a version before it).

    Raises:
        UsageError: naming the file and the checkpoint, where they do not match.
    """
    if layers.empty:
        return layers
    keys = list(zip(layers.step.tolist(), layers.kind.tolist(), strict=True))
    measured = set(zip(hessian.step.tolist(), hessian.kind.tolist(), strict=True))
    known = [k in measured for k in keys]
    end = len(keys) - known[::-1].index(True) if any(known) else 0
    last = max(hessian.step.tolist(), default=-1)
    trailing = set(keys[end:])  # one checkpoint's rows, after the last measured step: a write a stop cut short
    if len(trailing) > 1 or any(step <= last for step, _ in trailing):
        step, kind = next(iter(sorted(trailing)))
        raise UsageError(f"{file}: rows of a checkpoint at step {step} ({kind}) that hessian.csv does not have; "
                         "the run folder is corrupt")  # fmt: skip
    layers = layers.iloc[:end]
    for (step, kind), ok in zip(keys[:end], known[:end], strict=True):
        if not ok:
            raise UsageError(f"{file}: rows of a checkpoint at step {step} ({kind}) that hessian.csv does not have; "
                             "the run folder is corrupt")  # fmt: skip
    if layers.empty:
        return layers
    counts = layers.groupby(["step", "kind"], sort=False).layer.apply(lambda s: tuple(s.tolist()))
    if counts.nunique() > 1:
        (step, kind), ids = next(iter(counts[counts != counts.iloc[0]].items()))
        raise UsageError(f"{file}: the checkpoint at step {step} ({kind}) has layers {list(ids)}, the first one "
                         f"{list(counts.iloc[0])}; the run folder is corrupt")  # fmt: skip
    first = next(i for i, k in enumerate(zip(hessian.step, hessian.kind, strict=True)) if k == keys[0])
    have = set(counts.index)
    for step, kind in zip(hessian.step.iloc[first:], hessian.kind.iloc[first:], strict=True):
        if (step, kind) not in have:
            raise UsageError(f"{file}: no rows of the checkpoint at step {step} ({kind}) that hessian.csv has; the run "
                             "folder is corrupt")  # fmt: skip
    return layers


def _fields(line: bytes) -> int:
    """The fields of one CSV row (quoted fields with commas counted once)."""
    import csv

    return len(next(csv.reader([line.decode(errors="replace")]), []))


def checked_rows(df: pd.DataFrame, raw: bytes, file: Path) -> pd.DataFrame:
    """``df`` (read from ``raw``, the bytes of ``file``) with every numeric column as numbers, or a UsageError
    naming the file and row: every row is written whole and ends in a newline, so a file that does not was cut
    off inside its last row (whose fields could read as other numbers: "33.64" cut to "3"); a field that is
    not a number where one belongs, or a checkpoint kind that is not one, marks a damaged file too."""
    if raw and not raw.endswith(b"\n"):
        raise UsageError(f"{file}: the last row is cut off (no newline at the end); the run folder is corrupt")
    header = _fields(raw.split(b"\n", 1)[0].rstrip(b"\r"))
    fields = _fields(raw.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]) if len(df) else header
    if fields != header:  # a row cut short that a later write ended with a newline
        raise UsageError(f"{file}: the last row has {fields} fields, the header {header}; the run folder is corrupt")
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
