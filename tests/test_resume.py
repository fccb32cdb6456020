"""Stopped runs continue where they stopped: `sane-run resume=<folder>` and sweeps started again.

Real processes are stopped by SIGKILL and SIGTERM at several points, resumed, and their files compared byte
for byte with a run that was never stopped (hessian.csv without its `seconds` column, a timing).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, make_config
from omegaconf import OmegaConf
from test_cli import command, run

from sane_cli.cli import continue_command, hydra_quote
from sane_cli.config import validate
from sane_cli.errors import UsageError
from sane_cli.records import RunWriter, load_run, resume_point
from sane_cli.training import train

SPIKY = ["lr=3", "steps=300", "hessian.every=100", "dataset.n_train=1000", "device=cpu", "threads=1"]
# Adam: its moving averages carry over, and the preconditioner kept beside the parameters before a spike
ADAM = ["optim=adam", "lr=0.1", "hessian.spike_threshold=0.1", *SPIKY[1:]]
MOMENTUM = [
    *TINY,
    "steps=3000",
    "hessian.every=500",
    "optim=sgd",
    "optim.momentum=0.9",
    "optim.batch_size=32",
    "threads=1",
]


def _default_signals() -> None:
    """In the started process, SIGINT and SIGHUP as a shell leaves them for a command in the foreground (a
    pytest-xdist worker ignores SIGHUP, and what a parent ignores its children inherit)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [command("sane-run"), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_default_signals,
    )  # fmt: skip


def _stop_after(proc: subprocess.Popen, folder: Path, rows: int, sig: int) -> str:
    """Send ``sig`` once loss.csv holds ``rows`` rows (0: as soon as the run folder is claimed); the run's
    stderr."""

    def logged() -> int:
        path = folder / "loss.csv"
        return len(path.read_bytes().splitlines()) - 1 if path.exists() else -1

    try:
        deadline = time.time() + 120
        while logged() < rows and proc.poll() is None:
            assert time.time() < deadline, "the run did not get there"
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.communicate(timeout=60)[1]
    finally:
        proc.kill()


def _files(folder: Path) -> dict[str, bytes]:
    """The run's logs (layers.csv too) and spectra; hessian.csv without the `seconds` column (the only timing)."""
    out = {name: (folder / name).read_bytes() for name in ("metrics.csv", "loss.csv", "layers.csv")}
    lines = (folder / "hessian.csv").read_text().splitlines()
    drop = lines[0].split(",").index("seconds")
    out["hessian.csv"] = "\n".join(",".join(f for i, f in enumerate(ln.split(",")) if i != drop) for ln in lines)
    for path in sorted((folder / "spectra").iterdir()):
        out[f"spectra/{path.name}"] = path.read_bytes()
    return out


@pytest.mark.parametrize(
    "config,stops",
    [
        # GD at a large learning rate: pre- and post-spike checkpoints come and go between the stops
        # (SIGHUP: the terminal or ssh connection gone, handled as SIGTERM)
        (SPIKY, [(signal.SIGKILL, 0), (signal.SIGTERM, 40), (signal.SIGKILL, 150), (signal.SIGHUP, 230)]),
        # SGD with momentum: the batch order and the momentum buffers carry over
        (MOMENTUM, [(signal.SIGTERM, 30), (signal.SIGKILL, 1000), (signal.SIGINT, 2000)]),
        # Adam: its moment estimates carry over (slow: SGD's momentum above covers an optimiser's state)
        pytest.param(
            ADAM, [(signal.SIGTERM, 50), (signal.SIGKILL, 117), (signal.SIGTERM, 191)], marks=pytest.mark.slow
        ),
    ],
    ids=["gd-spikes", "sgd-momentum", "adam-spikes"],
)
def test_stopped_and_resumed_runs_equal_an_unstopped_one(tmp_path, config, stops):
    assert run(tmp_path, *config, "hydra.run.dir=whole").returncode == 0
    whole = load_run(tmp_path / "whole")
    folder = tmp_path / "stopped"
    _stop_after(_start(tmp_path, *config, f"hydra.run.dir={folder}"), folder, stops[0][1], stops[0][0])
    statuses = []
    for sig, rows in stops[1:]:
        statuses.append(json.loads((folder / "summary.json").read_text())["status"])
        _stop_after(_start(tmp_path, f"resume={folder}"), folder, rows, sig)
    statuses.append(json.loads((folder / "summary.json").read_text())["status"])
    out = run(tmp_path, f"resume={folder}")
    assert out.returncode == 0, out.stderr
    # SIGKILL leaves "running" (nothing can be written); SIGTERM, SIGINT and SIGHUP record "interrupted"
    assert statuses == ["running" if sig == signal.SIGKILL else "interrupted" for sig, _ in stops]
    resumed = load_run(folder)
    assert resumed.status == "completed" and len(resumed.summary["resumed"]) == len(stops)
    assert _files(folder) == _files(tmp_path / "whole")
    finals = {k: v for k, v in whole.summary.items() if k.startswith("final_") or k == "spikes_measured"}
    assert {k: resumed.summary[k] for k in finals} == finals
    if config in (SPIKY, ADAM):
        assert set(whole.hessian.kind) == {"scheduled", "pre_spike", "post_spike"}
    assert not list(folder.rglob("*.tmp"))


def test_a_sweep_started_again_skips_finished_jobs_and_resumes_stopped_ones(tmp_path):
    sweep = ["-m", *TINY, "steps=3000", "hessian.every=1000", "lr=0.01,0.02", "hydra.sweep.dir=sweep", "threads=1"]
    proc = _start(tmp_path, *sweep)
    second = None
    deadline = time.time() + 120
    while second is None:  # wait for the second job's folder, then stop the sweep inside it
        assert time.time() < deadline and proc.poll() is None
        second = next((p for p in (tmp_path / "sweep").glob("1_*") if (p / "loss.csv").exists()), None)
        time.sleep(0.05)
    _stop_after(proc, second, 500, signal.SIGTERM)
    (first,) = (tmp_path / "sweep").glob("0_*")
    assert load_run(first).status == "completed" and load_run(second).status == "interrupted"
    first_files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file()}

    out = run(tmp_path, *sweep)
    assert out.returncode == 0, out.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file()} == first_files
    assert load_run(second).status == "completed"
    alone = run(tmp_path, *TINY, "steps=3000", "hessian.every=1000", "lr=0.02", "threads=1", "hydra.run.dir=alone")
    assert alone.returncode == 0
    assert _files(second) == _files(tmp_path / "alone")


def _stopped_run(tmp_path: Path) -> Path:
    """A run stopped by SIGTERM mid-way (through the Python API: the handler raises in this process)."""
    cfg = make_config("steps=200", "hessian.every=50")
    folder = tmp_path / "run"
    original = torch.optim.SGD.step

    def step(self, *a, **k):  # the 120th step delivers a SIGTERM to this process
        step.calls += 1
        if step.calls == 120:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a, **k)

    step.calls = 0
    torch.optim.SGD.step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, folder, progress=False)
    finally:
        torch.optim.SGD.step = original
    return folder


def test_a_signal_during_a_step_is_kept_until_the_step_is_done(tmp_path):
    folder = _stopped_run(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] == 120  # after step 119's update
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["resume"]["step"] == 120
    assert checkpoint["resume"]["sizes"]["loss.csv"] == (folder / "loss.csv").stat().st_size


def _as_stored(cfg) -> dict:
    """A config as a run stores its own in summary.json: validated, resolved, plain."""
    return OmegaConf.to_container(validate(cfg.copy()), resolve=True)


def test_what_cannot_be_resumed_is_refused_in_one_line(tmp_path):
    folder = _stopped_run(tmp_path)
    cfg = make_config("steps=200", "hessian.every=50")
    assert resume_point(folder, _as_stored(cfg)).step == 120
    with pytest.raises(UsageError, match=r"holds a run with another config \(lr: 0.1 there, 0.3 now\)"):
        resume_point(folder, _as_stored(make_config("steps=200", "hessian.every=50", "lr=0.3")))
    writer = RunWriter.create(tmp_path / "busy")  # a run still going holds its folder
    try:
        with pytest.raises(UsageError, match="still being written by a running sane-run"):
            resume_point(tmp_path / "busy")
    finally:
        writer.close()
    # a CSV shorter than its checkpoint says: damaged, refused before anything is changed
    loss = (folder / "loss.csv").read_bytes()
    (folder / "loss.csv").write_bytes(loss[:100])
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="fewer than the .* its checkpoint.pt recorded"):
        train(cfg, folder, progress=False, resume=True)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    (folder / "loss.csv").write_bytes(loss)
    # a run written by a version with other hessian.csv columns: appending would misalign them
    hessian = (folder / "hessian.csv").read_bytes()
    header, rest = hessian.split(b"\n", 1)
    (folder / "hessian.csv").write_bytes(
        header.replace(b",n_eff_bound", b"").replace(b",sane_bound", b"") + b"\n" + rest
    )
    with pytest.raises(UsageError, match=r"written by sane-run [\d.]+, whose hessian.csv has other columns"):
        resume_point(folder, _as_stored(cfg))
    (folder / "hessian.csv").write_bytes(hessian)

    done = tmp_path / "done"
    train(make_config(), done, progress=False)
    nowhere = tmp_path / "nowhere"
    for args, message in [
        ([f"resume={done}"], f"{done} is a completed run; nothing to resume"),
        (
            [f"resume={folder}", "lr=0.3"],
            "'lr=0.3' cannot be given with resume=: a resumed run keeps its own config (only threads, device, logger "
            "may change); start a new run to change it",
        ),
        (
            [f"resume={nowhere}"],
            f"resume={nowhere} is not a folder; give the folder of a stopped run (it holds summary.json)",
        ),
        ([f"resume={folder}", f"resume={done}"], "resume= is given more than once; continue one run at a time"),
        (
            ["-m", f"resume={folder}"],
            "resume= continues one run; to continue a sweep, run it again with the same hydra.sweep.dir",
        ),
    ]:
        out = run(tmp_path, *args)
        assert out.returncode == 2 and out.stderr == f"sane-run: error: {message}\n", out.stderr
    out = run(tmp_path, f"resume={folder}", "threads=1")
    assert out.returncode == 0, out.stderr
    assert load_run(folder).status == "completed"


def test_a_signal_that_torch_turns_into_another_error_still_stops_the_run(tmp_path, monkeypatch):
    """torch's own interpreter (torch.func's decompositions) re-raises the error a signal handler raised as a
    RuntimeError; the run still records `interrupted` and saves a checkpoint to resume from. (SIGTERM: a
    non-interactive shell may start this process with SIGINT ignored.)"""
    import sane_cli.training as training

    real = training.measure
    calls = []

    def measure(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # inside the third checkpoint's computation
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except KeyboardInterrupt as e:
                raise RuntimeError(f"The following operation failed in the TorchScript interpreter: {e}") from None
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "measure", measure)
    cfg = make_config("steps=40", "hessian.every=10")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "SIGTERM at step 20"
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["resume"]["step"] == 20
    monkeypatch.setattr(training, "measure", real)
    train(cfg, tmp_path / "run", progress=False, resume=True)
    train(cfg, tmp_path / "whole", progress=False)
    assert _files(tmp_path / "run") == _files(tmp_path / "whole")


def test_resume_never_discards_or_mislabels_what_a_run_logged(tmp_path):
    """Without its checkpoint.pt a run that logged rows is refused, every file left as it was; a summary.json
    whose config was edited after the run started disagrees with the checkpoint it was trained with: refused,
    rather than rows of two learning rates in one file."""
    folder = _stopped_run(tmp_path)
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    summary = json.loads((folder / "summary.json").read_text())
    edited = {**summary, "config": {**summary["config"], "lr": 0.3, "optim": {**summary["config"]["optim"], "lr": 0.3}}}
    (folder / "summary.json").write_text(json.dumps(edited))
    out = run(tmp_path, f"resume={folder}")
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        f"sane-run: error: {folder}/summary.json's config disagrees with the config its checkpoint.pt was trained "
        "with (lr: 0.3 in summary.json, 0.1 in checkpoint.pt); put summary.json's value back (.hydra/config.yaml "
        "holds the run's start), or start a new run\n"
    )
    (folder / "summary.json").write_bytes(files[folder / "summary.json"])

    (folder / "checkpoint.pt").rename(tmp_path / "checkpoint.pt")
    out = run(tmp_path, f"resume={folder}")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert re.search(
        r"has no checkpoint.pt to resume from, but holds what the run logged "
        r"\(\d+ rows of metrics.csv, 3 rows of hessian.csv, \d+ rows of loss.csv, 3 spectra\)",
        out.stderr,
    ), out.stderr
    assert "resuming would start it over and discard that" in out.stderr
    with pytest.raises(UsageError, match="has no checkpoint.pt to resume from"):
        train(make_config("steps=200", "hessian.every=50"), folder, progress=False, resume=True)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
        p: b for p, b in files.items() if p.name != "checkpoint.pt"
    }

    # the checkpoint back: the run resumes with the config the checkpoint holds, to the end
    (tmp_path / "checkpoint.pt").rename(folder / "checkpoint.pt")
    out = run(tmp_path, f"resume={folder}", "threads=1")
    assert out.returncode == 0, out.stderr
    done = load_run(folder)
    assert done.status == "completed" and set(done.metrics.lr) == {0.1} and set(done.hessian.lr) == {0.1}


@pytest.mark.parametrize(
    "name", ["jürgen", "a b=c,d", "it's $HOME"], ids=["non-ascii", "space-eq-comma", "quote-dollar"]
)
def test_the_printed_continue_command_resumes_a_run_in_any_folder(tmp_path, name):
    """A run stopped by SIGTERM prints how to continue it; that line, given to a shell as it is, resumes the
    run, whatever characters its folder's path holds."""
    cwd = tmp_path / name
    cwd.mkdir()
    folder = cwd / "run"
    proc = _start(
        cwd, *TINY, "steps=300", "hessian.every=100", "threads=1", f"hydra.run.dir={hydra_quote(str(folder))}"
    )
    stderr = _stop_after(proc, folder, 150, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"
    again = continue_command(folder)
    assert f"keeps all it logged (continue: {again})" in stderr
    out = subprocess.run(["bash", "-c", again.replace("sane-run", command("sane-run"), 1)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, (again, out.stderr)
    assert load_run(folder).status == "completed" and load_run(folder).hessian.step.tolist() == [0, 100, 200, 300]


def test_a_full_disk_mid_run_is_recorded_as_failed(tmp_path, monkeypatch):
    """The disk fills after step 0 (simulated: every write fails with ENOSPC from the second checkpoint on,
    summary.json's too while other files hold the space). The room kept at the start is given up for the
    last summary: status `failed` with the error and its traceback, never `running`; once there is room
    again the run resumes to the end."""
    import errno

    import sane_cli.records.writer as records

    full = {"on": False}
    real_atomic, real_log = records.atomic, records.RunWriter.log_curvature

    def log_curvature(self, row, *args, **kwargs):
        if row["step"] > 0:
            full["on"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_log(self, row, *args, **kwargs)

    def atomic(path, write):
        if full["on"] and (path.parent / records.RESERVE).exists():  # the disk is full while the room is held
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_atomic(path, write)

    monkeypatch.setattr(records.RunWriter, "log_curvature", log_curvature)
    monkeypatch.setattr(records, "atomic", atomic)
    folder = tmp_path / "run"
    cfg = make_config("steps=40", "hessian.every=10")
    with pytest.raises(OSError, match="No space left"):
        train(cfg, folder, progress=False)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "OSError: [Errno 28] No space left on device"
    assert "Traceback" in summary["traceback"] and not (folder / records.RESERVE).exists()

    monkeypatch.undo()  # room again
    train(cfg, folder, progress=False, resume=True)
    done = load_run(folder)
    assert (
        done.status == "completed"
        and "traceback" not in done.summary
        and done.hessian.step.tolist() == [0, 10, 20, 30, 40]
    )


def test_a_hang_up_stops_a_run_that_can_no_longer_write_to_its_terminal(tmp_path):
    """SIGHUP (an ssh connection dropped) with the terminal gone (stdout and stderr pipes whose reader has
    closed them): the run records where it stopped, exits 129 (128 + SIGHUP) and resumes to the end."""
    folder = tmp_path / "run"
    proc = subprocess.Popen(
        [command("sane-run"), *TINY, "steps=300", "hessian.every=100", "threads=1", f"hydra.run.dir={folder}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_signals,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (folder / "loss.csv").exists() or len((folder / "loss.csv").read_bytes().splitlines()) < 150:
            assert time.time() < deadline and proc.poll() is None, "the run did not get there"
            time.sleep(0.02)
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 128 + signal.SIGHUP
    finally:
        proc.kill()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"].startswith("SIGHUP at step"), summary.get("error")
    out = run(tmp_path, f"resume={folder}")
    assert out.returncode == 0 and load_run(folder).hessian.step.tolist() == [0, 100, 200, 300], out.stderr
