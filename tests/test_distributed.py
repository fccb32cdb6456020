"""Data-parallel runs (sane_cli.distributed): started by torchrun on 2 gloo ranks on the CPU, every curvature method,
full-batch GD, mini-batch SGD and Adam give the numbers of a single process (float64, relative 1e-10); rank 0 alone
writes the run folder; a rank that dies stops the run resumably, and it resumes on another number of ranks. Real
processes, through the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY
from test_cli import command

from sane_cli.distributed import World
from sane_cli.records import find_runs, load_run, read_summary
from sane_cli.training import _Batches

TESTS = Path(__file__).parent
# the tiny run in float64, on 197 examples (SGD's batches of 128 then differ from step to step)
BASE = [w for w in TINY if not w.startswith(("dataset.n_train=", "steps=", "hessian.every="))] + [
    "dataset.n_train=197", "precision=float64", "steps=12", "hessian.every=6", "hessian.subset=150",
]  # fmt: skip
METHODS = "hessian=exact,block_diag,block_band,lanczos,slq"
TABLES = ("hessian.csv", "metrics.csv", "loss.csv", "layers.csv")


def sane_run(cwd: Path, *args: str, ranks: int = 1, die_on: int | None = None) -> subprocess.CompletedProcess:
    """``sane-run args``, in one process or as ``ranks`` ranks started by torchrun (gloo on the CPU); ``die_on``:
    the rank whose process the model ``helpers:dies_in_training`` kills."""
    start = [command("sane-run")]
    if ranks > 1:
        start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                 "--no-python", *start]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(TESTS)}
    env.pop("DIE_ON_RANK", None)
    if die_on is not None:
        env["DIE_ON_RANK"] = str(die_on)
    return subprocess.run([*start, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def assert_same_numbers(a: Path, b: Path) -> None:
    """Every number of the tables of run folders ``a`` and ``b`` agrees to 1e-10 of the largest of itself, its
    column's largest magnitude and the table's largest lambda_max (an eigensolver's accuracy is relative to the
    spectrum's scale: eigenvalues that are zero but for rounding, 1e-17, differ in every digit)."""
    for name in TABLES:
        left, right = pd.read_csv(a / name), pd.read_csv(b / name)
        assert left.shape == right.shape and list(left.columns) == list(right.columns), name
        numbers = [c for c in left.select_dtypes("number").columns if c != "seconds"]
        spectrum = np.abs(left["lambda_max"]).max() if "lambda_max" in left and len(left) else 0.0
        for column in numbers:
            x, y = left[column].to_numpy(float), right[column].to_numpy(float)
            scale = max(np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0, spectrum)
            np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-10 * scale, err_msg=f"{name}: {column}")
        text = [c for c in left.columns if c not in numbers and c != "seconds"]
        pd.testing.assert_frame_equal(left[text], right[text])


def by_job(folder: Path) -> dict:
    return {(r.config["optim"]["name"], r.config["hessian"]["method"]): r for r in map(load_run, find_runs(folder))}


def test_the_shards_hold_every_example_once():
    for n in (0, 1, 5, 97):
        for size in (1, 2, 3, 7):
            taken = [i for r in range(size) for i in range(n)[World(rank=r, size=size).shard(n)]]
            assert taken == list(range(n)), (n, size)


def test_the_ranks_batches_make_up_the_single_process_batch():
    """SGD's batches on 3 ranks: at every step the ranks' examples together are the single process's batch, and
    their shares of the batch add up to 1."""
    x = torch.arange(97.0)[:, None]
    y = torch.arange(97)
    single = _Batches(x, y, 16, seed=4)
    shards = [World(rank=r, size=3).shard(97) for r in range(3)]
    ranks = [_Batches(x[s], y[s], 16, seed=4, n=97, offset=s.start) for s in shards]
    for _ in range(20):  # past the end of an epoch: the next shuffle is the same on every rank
        want, _, share = single.next()
        parts = [b.next() for b in ranks]
        got = torch.cat([xb for xb, _, _ in parts])
        assert sorted(got[:, 0].tolist()) == sorted(want[:, 0].tolist()) and share == 1.0
        assert sum(s for _, _, s in parts) == pytest.approx(1.0)


def test_two_ranks_give_the_numbers_of_one_for_every_method_and_rank_0_alone_writes(tmp_path):
    """Every method under mini-batch SGD and full-batch Adam (10 jobs), swept in one process and on 2 ranks: the
    same numbers, the same files, nothing else written, one log."""
    args = ["-m", *BASE, METHODS, "optim=sgd,adam", "hessian.layers=true"]
    one = sane_run(tmp_path, *args, "hydra.sweep.dir=one")
    assert one.returncode == 0, one.stderr[-3000:]
    (tmp_path / "two").mkdir()
    two = sane_run(tmp_path / "two", *args, "hydra.sweep.dir=sweep", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("sane-run: the sweep ran 10 jobs: 10 completed") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["sweep"]
    single, double = by_job(tmp_path / "one"), by_job(tmp_path / "two" / "sweep")
    assert len(single) == 10 and sorted(single) == sorted(double)
    for job, run in single.items():
        got = double[job].path
        assert run.status == double[job].status == "completed", job
        assert_same_numbers(run.path, got)
        summary = read_summary(got)
        assert summary["environment"]["ranks"] == 2 and summary["environment"]["backend"] == "gloo"
        assert summary["n_train"] == 197 and (pd.read_csv(got / "hessian.csv")["subset"] == 150).all()
        want = sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))
        assert sorted(str(p.relative_to(got)) for p in got.rglob("*")) == want, job
        assert (got / "run.log").read_text().count("run completed") == 1


def test_a_resnet_with_batch_normalisation_trains_on_two_ranks_as_in_one_process(tmp_path):
    """A ResNet's batch normalisation takes its training statistics over the whole batch, every rank's part of it
    (mini-batch SGD: each rank holds a part of each batch), so that 2 ranks give one process's numbers."""
    args = [*[w for w in BASE if not w.startswith(("model.width=", "depth="))], "model=resnet", "depth=8",
            "model.channels=2", "optim=sgd", "hessian=exact", "steps=8", "hessian.every=4"]  # fmt: skip
    one = sane_run(tmp_path, *args, "hydra.run.dir=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = sane_run(tmp_path, *args, "hydra.run.dir=two", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert read_summary(tmp_path / "two")["environment"]["ranks"] == 2
    assert_same_numbers(tmp_path / "one", tmp_path / "two")
    # the running statistics (in the checkpoint) too: they are what every Hessian is measured with
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-12, msg=key)


DYING = [w for w in BASE if not w.startswith("model.width=")] + [
    "model=custom", "model.factory=helpers:dies_in_training", "hessian=exact", "steps=16", "hessian.every=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The run of :data:`DYING` in one process, never stopped."""
    folder = tmp_path_factory.mktemp("whole")
    done = sane_run(folder, *DYING, "hydra.run.dir=whole")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "whole"


def test_a_rank_that_dies_stops_the_run_resumably_and_it_resumes_on_one_rank(tmp_path, whole):
    """Rank 1 is killed (SIGKILL) in its 7th step: rank 0 records where the run stopped and keeps its checkpoint;
    continued by one process, the run ends with the numbers of a run that was never stopped."""
    cut = sane_run(tmp_path, *DYING, "hydra.run.dir=cut", ranks=2, die_on=1)
    assert cut.returncode != 0
    summary = read_summary(tmp_path / "cut")
    assert summary["status"] == "interrupted", summary.get("error")
    # rank 0 learns of it from its next collective (or, where torchrun is quicker, from the SIGTERM it sends)
    assert summary["steps_done"] == 6 and ("a rank of the 2-rank job stopped" in summary["error"]
                                           or "SIGTERM" in summary["error"]), summary  # fmt: skip
    assert "sane-run: stopped" in cut.stderr, cut.stderr[-3000:]
    again = sane_run(tmp_path, f"resume={tmp_path / 'cut'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_summary(tmp_path / "cut")["status"] == "completed"
    assert_same_numbers(whole, tmp_path / "cut")


def test_a_killed_single_run_resumes_on_two_ranks(tmp_path, whole):
    """A run in one process killed (SIGKILL) in its 7th step continues on 2 ranks from its last checkpoint (step 4)
    to the numbers of the run that was never stopped."""
    cut = sane_run(tmp_path, *DYING, "hydra.run.dir=cut", die_on=0)
    assert cut.returncode == -9 and read_summary(tmp_path / "cut")["status"] == "running"
    again = sane_run(tmp_path, f"resume={tmp_path / 'cut'}", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = read_summary(tmp_path / "cut")
    assert summary["status"] == "completed" and summary["resumed"][0]["step"] == 4
    assert summary["resumed"][0]["environment"]["ranks"] == 2
    assert_same_numbers(whole, tmp_path / "cut")


@pytest.mark.slow
def test_a_multi_task_submitit_job_gives_the_numbers_of_one_process(tmp_path):
    """hydra/launcher=submitit_local with tasks_per_node=2: each job is a 2-rank job (task 0 writes its folder)."""
    args = ["-m", *BASE, "hessian=exact,slq", "hessian.layers=true"]
    one = sane_run(tmp_path, *args, "hydra.sweep.dir=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = sane_run(tmp_path, *args, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                   "hydra.launcher.timeout_min=5", "hydra.sweep.dir=two")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = by_job(tmp_path / "one"), by_job(tmp_path / "two")
    assert len(single) == 2 and sorted(single) == sorted(double)
    for job, run in single.items():
        assert read_summary(double[job].path)["environment"]["ranks"] == 2
        assert_same_numbers(run.path, double[job].path)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_and_the_run_resumes(tmp_path):
    """SIGTERM to torchrun (what a scheduler sends) in training: rank 0 records where the run stopped, in one line;
    started again on 2 ranks, the run ends with the numbers of a run that was never stopped."""
    import signal
    import time

    longer = [*DYING, "steps=400", "hessian.every=200"]
    done = sane_run(tmp_path, *longer, "hydra.run.dir=whole")
    assert done.returncode == 0, done.stderr[-3000:]
    start = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
             command("sane-run"), *longer, "hydra.run.dir=cut"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(start, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "cut" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 4):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    summary = read_summary(tmp_path / "cut")
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"], summary
    assert err.count("sane-run: stopped by SIGTERM at step") == 1, err[-3000:]
    again = sane_run(tmp_path, f"resume={tmp_path / 'cut'}", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_numbers(tmp_path / "whole", tmp_path / "cut")
