"""logger=tensorboard: the rows of a run as TensorBoard scalars, read back by TensorBoard's own reader."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from helpers import TINY, make_config
from test_cli import run
from test_resume import _start, _stop_after

from sane_cli import trackers
from sane_cli.config import validate
from sane_cli.errors import UsageError
from sane_cli.records import load_run
from sane_cli.training import train

pytest.importorskip("tensorboard", reason="the tensorboard extra (in the test extras) is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``folder``, as TensorBoard reads them (purged steps dropped)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_receives_every_metrics_curvature_and_layer_row(tmp_path):
    train(make_config("logger=tensorboard", "depth=3"), tmp_path / "run")
    run_ = load_run(tmp_path / "run")
    got = scalars(tmp_path / "run" / "tensorboard")
    m, h, layers = run_.metrics, run_.hessian[run_.hessian.kind == "scheduled"], run_.layers
    for tag, column in (("train/loss", "train_loss"), ("test/acc", "test_acc"), ("train/lr", "lr")):
        assert [s for s, _ in got[tag]] == list(m.step)
        np.testing.assert_allclose([v for _, v in got[tag]], m[column], rtol=1e-6)  # (float32 in event files)
    for key in ("lambda_max", "sane", "n_eff", "trace", "sharpness_ratio"):
        assert [s for s, _ in got[f"curvature/{key}"]] == list(h.step)
        np.testing.assert_allclose([v for _, v in got[f"curvature/{key}"]], h[key], rtol=1e-6)
    for layer in (1, 2, 3):
        rows = layers[(layers.layer == layer) & (layers.kind == "scheduled")]
        for key in ("sane", "sane_net", "lambda_max"):
            np.testing.assert_allclose([v for _, v in got[f"layers/{key}/{layer}"]], rows[key], rtol=1e-6)
    assert "curvature/preconditioned_sharpness" not in got  # NaN for plain GD: not sent


def test_a_resumed_run_replaces_what_was_logged_after_its_checkpoint(tmp_path):
    config = [*TINY, "steps=400", "hessian.every=100", "logger=tensorboard", "threads=1"]
    assert run(tmp_path, *config, "hydra.run.dir=whole").returncode == 0
    folder = tmp_path / "stopped"
    _stop_after(_start(tmp_path, *config, f"hydra.run.dir={folder}"), folder, 250, signal.SIGTERM)
    assert load_run(folder).status == "interrupted"
    out = run(tmp_path, f"resume={folder}")
    assert out.returncode == 0, out.stderr
    whole, resumed = scalars(tmp_path / "whole" / "tensorboard"), scalars(folder / "tensorboard")
    assert set(resumed) == set(whole)
    for tag in ("train/loss", "curvature/sane", "layers/sane/1"):
        assert [s for s, _ in resumed[tag]] == [s for s, _ in whole[tag]], tag  # each step once
        np.testing.assert_allclose([v for _, v in resumed[tag]], [v for _, v in whole[tag]], rtol=1e-6)


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    summary = train(make_config("logger=tensorboard", f"logger.dir={blocker}/tb"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert load_run(tmp_path / "run").hessian.shape[0] == 3
    warnings = [r.getMessage() for r in caplog.records if "logger=tensorboard failed" in r.getMessage()]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0]


def test_a_disk_that_fills_under_tensorboards_writer_thread_is_one_warning(tmp_path, caplog, monkeypatch):
    """The event file is written by TensorBoard's own thread: a full disk there (its writes failing) ends in the
    one warning and a completed run, with no thread traceback on stderr; the hook is put back after."""
    import threading

    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    printed = []  # what the thread would have printed as a traceback

    def hook(args):
        printed.append(args.exc_value)

    monkeypatch.setattr(threading, "excepthook", hook)
    summary = train(make_config("logger=tensorboard", "steps=40"), tmp_path / "run")
    assert summary["status"] == "completed" and threading.excepthook is hook and printed == []
    warnings = [r.getMessage() for r in caplog.records if "logger=tensorboard failed" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


def test_a_missing_tracker_package_is_one_line_before_any_work(monkeypatch):
    real = trackers.importlib.util.find_spec
    missing = lambda name: None if name == "tensorboard" else real(name)  # noqa: E731
    monkeypatch.setattr(trackers.importlib.util, "find_spec", missing)
    with pytest.raises(UsageError, match=r"logger=tensorboard needs the tensorboard package.*sane-run\[tensorboard\]"):
        validate(make_config("logger=tensorboard"))
    with pytest.raises(UsageError, match=r"logger.name='wandb' is invalid"):
        cfg = make_config()
        cfg.logger.name = "wandb"
        validate(cfg)
