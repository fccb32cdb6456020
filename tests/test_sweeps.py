"""A sweep that survives its failures: a job that fails, or whose process is stopped or killed alone, leaves the
other jobs to run to their end; the sweep's account at the end (a line per job that did not end, a count) and its
exit status; a sweep started again; stop_on_failure. Real processes, through the command."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY
from test_cli import command

from sane_cli.records import find_runs, load_run
from sane_cli.sweeps import account, died, outcome, run_apart

TESTS = Path(__file__).parent
BASE = [w for w in TINY if not w.startswith("model.width=")]  # the custom model takes its width in model.kwargs
FLAKY = ["model=custom", "model.factory=helpers:fails_in_training", "threads=1"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
SUBMITIT = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
SAME = ("metrics.csv", "loss.csv", "spectra/step_0.npz", "spectra/step_20.npz")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(TESTS)}


def sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([command("sane-run"), "-m", *BASE, *FLAKY, *args], cwd=cwd, capture_output=True, text=True,
                          env=env(), timeout=300)  # fmt: skip


def by_width(folder: Path) -> dict:
    """The runs below ``folder`` by their model's width (the jobs that neither fail nor hang)."""
    runs = [load_run(p) for p in find_runs(folder)]
    return {r.config["model"]["kwargs"].get("width"): r for r in runs if set(r.config["model"]["kwargs"]) == {"width"}}


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict:
    """The jobs that neither fail nor hang, swept without the failures (once for the module's tests)."""
    folder = tmp_path_factory.mktemp("alone")
    ref = sweep(folder, "model.kwargs={width:3},{width:5}", "hydra.sweep.dir=ref")
    assert ref.returncode == 0, ref.stderr
    assert "sane-run: the sweep ran 2 jobs: 2 completed" in ref.stdout
    return by_width(folder / "ref")


def assert_same_as_alone(want: dict, folder: Path) -> None:
    """The completed jobs' files are byte-identical to those of the same jobs swept without the failures."""
    got = by_width(folder)
    assert sorted(got) == sorted(want) == [3, 5]
    for width in want:
        assert got[width].status == "completed"
        for name in SAME:
            assert (got[width].path / name).read_bytes() == (want[width].path / name).read_bytes(), (width, name)
        untimed = [pd.read_csv(r.path / "hessian.csv").drop(columns="seconds") for r in (got[width], want[width])]
        pd.testing.assert_frame_equal(*untimed, check_exact=True)


def test_the_account_counts_each_outcome_and_exits_1_where_a_job_did_not_end():
    ended = [outcome("a", "completed"), outcome("b", "diverged"), outcome("c", "converged")]
    lines, code = account(ended)
    assert lines == ["sane-run: the sweep ran 3 jobs: 1 completed, 1 converged, 1 diverged"] and code == 0
    lines, code = account([*ended, outcome("d", "killed", "its process was killed (SIGKILL)"), outcome("e", "not run")])
    assert code == 1 and lines[0] == "sane-run: killed: d: its process was killed (SIGKILL)"
    assert lines[2] == "sane-run: the sweep ran 5 jobs: 1 completed, 1 converged, 1 diverged, 1 killed, 1 not run"
    assert (
        lines[3] == "sane-run: run the sweep again with the same hydra.sweep.dir to continue the jobs that did not end"
    )
    lines, code = account([*ended, outcome("f", "refused", "f holds no readable run (summary.json: ...)")])
    assert code == 2 and lines[0] == "sane-run: refused: f: f holds no readable run (summary.json: ...)"
    assert lines[-1] == "sane-run: fix what each refused job's line names"
    lines, code = account([outcome("g", "failed", "RuntimeError: x"), outcome("h", "refused", "...")])
    assert code == 2 and lines[-1] == ("sane-run: fix what each refused job's line names; failed jobs are retried when "
                                       "the sweep is run again with hydra.sweeper.retry_failed=true")  # fmt: skip


@pytest.mark.parametrize(
    "word,error",
    [
        ("hydra.sweeper.stop_on_failure=no", "hydra.sweeper.stop_on_failure=no is invalid: must be true or false"),
        ("hydra.sweeper.retry_failed=maybe", "hydra.sweeper.retry_failed=maybe is invalid: must be true or false"),
        ("hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs=0 is invalid: must be a whole number of jobs at a time"),
    ],
)
def test_the_sweeps_switches_take_only_their_values(word, error):
    from sane_cli.cli import precheck
    from sane_cli.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(error)):
        precheck(["-m", *TINY, "lr=0.1,0.2", word])


def test_a_worker_that_dies_loses_its_job_alone():
    """run_apart: n workers at most, each job's result in order, and a worker that dies (here by SIGABRT) gives
    its job to ``lost`` while the jobs queued behind it run in a new worker."""
    calls = [os.getpid, os.getpid, os.abort, os.getpid, os.getpid, os.getpid]
    lost = []
    results = run_apart(calls, 2, lambda i, e: lost.append(i) or died(e))
    assert lost == [2] and results[2] == "its process was killed (SIGABRT)"
    pids = [r for i, r in enumerate(results) if i != 2]
    assert os.getpid() not in pids and len(set(pids)) <= 3  # two workers at most, one of them replaced


def test_a_failed_job_leaves_the_sequential_sweep_going_and_is_retried_only_when_asked(tmp_path, alone):
    out = sweep(tmp_path, "model.kwargs={width:3},{fail:true},{width:5}", "hydra.sweep.dir=sw")
    assert out.returncode == 1, out.stderr
    (failed,) = [p for p in find_runs(tmp_path / "sw") if load_run(p).status == "failed"]
    assert f"sane-run: failed: {failed}: RuntimeError: a simulated failure in training" in out.stderr.splitlines()
    assert "sane-run: the sweep ran 3 jobs: 2 completed, 1 failed" in out.stderr
    assert_same_as_alone(alone, tmp_path / "sw")

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "sw").rglob("*") if p.is_file()}
    again = sweep(tmp_path, "model.kwargs={width:3},{fail:true},{width:5}", "hydra.sweep.dir=sw")
    assert again.returncode == 1, again.stderr
    assert "not retried (retry it with hydra.sweeper.retry_failed=true)" in again.stderr
    assert "sane-run: the sweep ran 3 jobs: 2 completed, 1 failed" in again.stderr
    assert "the run failed" not in again.stderr  # nothing ran
    changed = [p for p, t in before.items() if p.stat().st_mtime_ns != t and p.name != "multirun.yaml"]
    assert changed == []

    retried = sweep(tmp_path, "model.kwargs={width:3},{fail:true},{width:5}", "hydra.sweep.dir=sw",
                    "hydra.sweeper.retry_failed=true")  # fmt: skip
    assert retried.returncode == 1
    assert retried.stderr.count("sane-run: error: the run failed (RuntimeError: a simulated failure") == 1


def test_stop_on_failure_runs_no_job_after_the_first_failure(tmp_path):
    out = sweep(tmp_path, "model.kwargs={fail:true},{width:3}", "hydra.sweep.dir=sw",
                "hydra.sweeper.stop_on_failure=true")  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "sane-run: the sweep ran 2 jobs: 1 failed, 1 not run" in out.stderr
    assert "(stop_on_failure)" in out.stderr
    assert [load_run(p).status for p in find_runs(tmp_path / "sw")] == ["failed"]  # the job not run left no folder
    assert not (tmp_path / "sw" / ".sane-run-stop").exists()
    again = sweep(tmp_path, "model.kwargs={fail:true},{width:3}", "hydra.sweep.dir=sw")  # off again: it runs
    assert "sane-run: the sweep ran 2 jobs: 1 completed, 1 failed" in again.stderr
    # a failure again, with stop_on_failure: the job that ended is counted as it ended, not as stopped
    retried = sweep(tmp_path, "model.kwargs={fail:true},{width:3}", "hydra.sweep.dir=sw",
                    "hydra.sweeper.stop_on_failure=true", "hydra.sweeper.retry_failed=true")  # fmt: skip
    assert "sane-run: the sweep ran 2 jobs: 1 completed, 1 failed" in retried.stderr, retried.stderr


@pytest.mark.slow  # the parallel tests below have a failed job too
def test_a_failed_job_does_not_stop_a_parallel_sweep(tmp_path, alone):
    out = sweep(tmp_path, "model.kwargs={width:3},{fail:true},{width:5}", "hydra.sweep.dir=sw", *JOBLIB)
    assert out.returncode == 1, out.stderr
    assert "sane-run: the sweep ran 3 jobs: 2 completed, 1 failed" in out.stderr
    assert_same_as_alone(alone, tmp_path / "sw")


@pytest.mark.parametrize(
    "launcher,sig,ended",
    [
        (JOBLIB, signal.SIGTERM, "interrupted"),
        (JOBLIB, signal.SIGKILL, "killed"),
        pytest.param(SUBMITIT, signal.SIGTERM, "interrupted", marks=pytest.mark.slow),
        pytest.param(SUBMITIT, signal.SIGKILL, "killed", marks=pytest.mark.slow),
    ],
    ids=["joblib-term", "joblib-kill", "submitit-term", "submitit-kill"],
)
def test_a_job_stopped_alone_leaves_the_others_to_end(tmp_path, alone, launcher, sig, ended):
    """One job fails by its config and another's process is stopped alone (SIGTERM, as a scheduler's preemption
    of one task; SIGKILL, as the out-of-memory killer) while it trains: the other jobs, queued behind them too,
    run to their end with the same files as without the failures; the sweep accounts for each and exits 1."""
    pid_file = tmp_path / "hanging.pid"
    jobs = f"model.kwargs={{fail:true}},{{hang:'{pid_file}'}},{{width:3}},{{width:5}}"
    proc = subprocess.Popen(
        [command("sane-run"), "-m", *BASE, *FLAKY, jobs, "hydra.sweep.dir=sw", *launcher], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and proc.poll() is None, "the hanging job did not start training"
            time.sleep(0.1)
        time.sleep(1.0)  # in training: its steps take half a second each
        os.kill(int(pid_file.read_text()), sig)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr
    runs = {p.name.split("_")[0]: p for p in (tmp_path / "sw").iterdir() if p.is_dir() and p.name[0].isdigit()}
    stopped = runs["1"]
    assert f"sane-run: {ended}: {stopped}" in stderr
    assert f"sane-run: the sweep ran 4 jobs: 2 completed, 1 failed, 1 {ended}" in stderr
    assert load_run(stopped).status == ("interrupted" if sig == signal.SIGTERM else "running")
    assert load_run(runs["0"]).status == "failed"
    assert_same_as_alone(alone, tmp_path / "sw")
