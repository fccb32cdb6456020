"""The installed `sane-run` and `sane-report` commands, run in a subprocess from an empty folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY

from sane_cli.cli import precheck
from sane_cli.errors import UsageError
from sane_cli.records import find_runs, load_run


def command(name: str) -> str:
    path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.exists(path), f"{name} is not installed: pip install -e '.[test]'"
    return path


def run(cwd, *args, name="sane-run"):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([command(name), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_single_run(tmp_path):
    out = run(tmp_path, *TINY, "lr=0.05")
    assert out.returncode == 0, out.stderr
    (path,) = find_runs(tmp_path / "outputs" / "runs")
    assert path.relative_to(tmp_path).parts[:2] == ("outputs", "runs")
    r = load_run(path)
    assert r.status == "completed" and r.config["optim"]["lr"] == 0.05
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "checkpoint.pt"):
        assert (path / name).is_file(), name
    log = (path / "run.log").read_text()
    assert log.count("curvature: lambda_max") == 3 and "(threshold 40)" in log
    # OpenMP's idle threads spin briefly (unless the user chose otherwise): long spins collapse on a shared machine
    environment = r.summary["environment"]
    if "OMP_WAIT_POLICY" not in os.environ:
        assert environment["gomp_spincount"] == os.environ.get("GOMP_SPINCOUNT", "3000")
    else:
        assert environment["omp_wait_policy"] == os.environ["OMP_WAIT_POLICY"]


def test_multirun_sweep(tmp_path):
    out = run(tmp_path, "-m", *TINY, "lr=0.05,0.1")
    assert out.returncode == 0, out.stderr
    runs = find_runs(tmp_path / "outputs" / "sweeps")
    assert len(runs) == 2
    assert sorted(load_run(p).config["optim"]["lr"] for p in runs) == [0.05, 0.1]
    assert {p.name.split("_")[0] for p in runs} == {"0", "1"}
    assert all("lr=0.05" in p.name or "lr=0.1" in p.name for p in runs)


@pytest.mark.parametrize(
    "args,message",
    [
        (["lr=-1"], "sane-run: error: optim.lr=-1 is invalid: must be a number > 0"),
        (["dataset=imagenet"], "sane-run: error: dataset='imagenet' is unknown; choose one of"),
        (["-m", "depth=2,0"], "sane-run: error: model.depth=0 is invalid"),
        (
            ["dataset=mnist", "dataset.root=nowhere", "dataset.download=false"],
            "sane-run: error: dataset=mnist: missing train-images-idx3-ubyte",
        ),
        (
            ["dataset=mnist", "dataset.root=nowhere", "dataset.mirror=http://127.0.0.1:9/"],
            "sane-run: error: dataset=mnist: could not download http://127.0.0.1:9/train-images-idx3-ubyte.gz into ",
        ),
        (["foo=1"], "sane-run: error: foo is not a config key; check its spelling"),
        (["lr=[1,"], "sane-run: error: 'lr=[1,' is not a valid override"),
        (["-m", "hydra/launcher=slurmm", "lr=0.1,0.2"], "sane-run: error: hydra/launcher=slurmm is unknown; choose"),
        (["hydra.run.dir=setup.cfg/run"], "sane-run: error: cannot write the run to setup.cfg/run: "),
        pytest.param(
            ["-m", "hydra/launcher=slurm", "lr=0.1,0.2"],
            "sane-run: error: hydra/launcher=slurm needs SLURM's commands (sbatch, srun not found on PATH)",
            marks=pytest.mark.skipif(
                shutil.which("srun") is not None
                or importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                reason="SLURM is installed here, or the submitit plugin is not",
            ),
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    """Through the installed command, one case of each path a bad command line is refused by (a value, an
    unknown option, a sweep's later job, the data's files, Hydra's parser, a key, the launcher, the output
    folder); the rest of the checks are tested in-process (tests/test_config.py)."""
    (tmp_path / "setup.cfg").write_text("a file where a folder is asked for\n")
    out = run(tmp_path, *args)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert not (tmp_path / "outputs").exists()  # rejected before Hydra made a run folder


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_is_recorded_in_one_line(tmp_path, sig):
    """SIGTERM (schedulers, `timeout`) and SIGINT (Ctrl-C): the run records where it stopped, prints one
    line, and exits 128 + the signal's number."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [command("sane-run"), *TINY, "steps=1000000", "hessian.every=1000000"]
    # as in a terminal's foreground job: a non-interactive shell (CI) starts its children with SIGINT ignored,
    # and Python then installs no Ctrl-C handler
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip

    def rows_logged() -> int:
        found = list(tmp_path.glob("outputs/runs/*/*/metrics.csv"))
        return len(found[0].read_text().splitlines()) - 1 if found else 0

    try:
        deadline = time.time() + 120
        while rows_logged() < 2:  # mid-training: a few metrics rows written
            assert time.time() < deadline and proc.poll() is None, "the run ended or did not start"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a million-step run behind a failed test
    assert proc.returncode == 128 + sig
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"sane-run: stopped by {sig.name} at step "), err
    run = load_run(find_runs(tmp_path)[0])
    assert run.status == "interrupted" and run.summary["error"].startswith(f"{sig.name} at step ")
    assert run.summary["steps_done"] >= run.metrics.step.iloc[-1] > 0


def test_a_named_folder_that_holds_a_run_is_refused_untouched(tmp_path, monkeypatch):
    assert run(tmp_path, *TINY, "hydra.run.dir=done").returncode == 0
    before = {p: p.read_bytes() for p in sorted((tmp_path / "done").rglob("*")) if p.is_file()}
    out = run(tmp_path, *TINY, "hydra.run.dir=done", "lr=0.5")
    assert out.returncode == 2 and out.stderr.strip() == (
        "sane-run: error: hydra.run.dir=done already holds a run (summary.json); choose another folder, or "
        "continue a stopped run with sane-run resume=done"
    )
    assert {p: p.read_bytes() for p in sorted((tmp_path / "done").rglob("*")) if p.is_file()} == before
    for args in (["hydra.run.dir=done/spectra"], ["-m", "lr=0.1,0.2", "hydra.sweep.dir=done"],
                 ["-m", "lr=0.1,0.2", "hydra.sweep.dir=done/sweep"]):  # fmt: skip
        out = run(tmp_path, *TINY, *args)
        key = args[-1].split("=")[0]
        assert out.returncode == 2 and out.stderr.strip().startswith(
            f"sane-run: error: {key}={tmp_path / args[-1].split('=')[1]} lies inside the run folder {tmp_path / 'done'}"
        ), out.stderr
        assert {p: p.read_bytes() for p in sorted((tmp_path / "done").rglob("*")) if p.is_file()} == before
    # named through an interpolation (refused as the job starts, nothing left inside the finished run)
    monkeypatch.setenv("SANE_TEST_ROOT", str(tmp_path))
    everything = sorted((tmp_path / "done").rglob("*"))
    for args in (
        ["hydra.run.dir=${oc.env:SANE_TEST_ROOT}/done/sub/deeper"],
        ["-m", "lr=0.1,0.2", "hydra.sweep.dir=${oc.env:SANE_TEST_ROOT}/done/sw"],
    ):
        out = run(tmp_path, *TINY, *args)
        assert out.returncode == 2 and f"lies inside the run folder {tmp_path / 'done'}" in out.stderr, out.stderr
        assert sorted((tmp_path / "done").rglob("*")) == everything
    # an interpolation that cannot be resolved: one line, exit 2, nothing made
    out = run(tmp_path, *TINY, "hydra.run.dir=${oc.env:SANE_TEST_UNSET_VARIABLE}/x")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "sane-run: error: InterpolationResolutionError: KeyError raised while resolving interpolation: "
        "\"Environment variable 'SANE_TEST_UNSET_VARIABLE' not found\""
    ]


def test_two_runs_started_into_one_folder_leave_the_winners_record(tmp_path):
    """Started together into one hydra.run.dir: one claims the folder, the other is refused in one line, and
    .hydra/ (written only by the run that claimed it) records the winner's config, never the loser's."""
    for trial in range(3):
        folder = tmp_path / f"one_{trial}"
        procs = [
            subprocess.Popen([command("sane-run"), *TINY, f"lr={lr}", f"hydra.run.dir={folder}"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for lr in (0.3, 0.1)
        ]  # fmt: skip
        errs = [p.communicate(timeout=300)[1] for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], errs
        (loser,) = [e for p, e in zip(procs, errs, strict=True) if p.returncode == 2]
        assert len(loser.strip().splitlines()) == 1 and "already holds a run" in loser, loser  # either check
        lr = load_run(folder).config["optim"]["lr"]
        hydra_config = (folder / ".hydra" / "config.yaml").read_text()
        assert f"lr: {lr}\n" in hydra_config and f"lr: {0.4 - lr:.1f}\n" not in hydra_config
        assert "error" not in (folder / "run.log").read_text().lower()


def test_a_sweep_started_again_with_another_config_says_so_per_job(tmp_path):
    """Finished jobs of a sweep started again are skipped; where they ran with another config (here a key that
    is not in folder names) each says so in one line. The earlier multirun.yaml is kept, not overwritten."""
    sweep = [
        "-m",
        *TINY,
        "lr=0.1,0.2",
        "hydra.sweep.dir=sw",
        "hydra.sweep.subdir=job${hydra.job.num}",
        "dataset.noise=0.1",
    ]
    assert run(tmp_path, *sweep).returncode == 0
    first = (tmp_path / "sw" / "multirun.yaml").read_text()
    jobs = find_runs(tmp_path / "sw")
    before = {p: p.read_bytes() for p in sorted((tmp_path / "sw").rglob("*")) if p.is_file()}
    out = run(tmp_path, *sweep[:-1], "dataset.noise=0.2")
    assert out.returncode == 2, out.stderr  # none of the jobs asked for ran: refused, as the command asks too much
    assert "sane-run: the sweep ran 2 jobs: 2 refused" in out.stderr
    said = [ln for ln in out.stderr.splitlines() if "of another config" in ln and "skipped" in ln]
    assert len(said) == 2 and all(
        "run of another config (dataset.noise: 0.1 there, 0.2 now); skipped, not run" in ln for ln in said
    ), out.stderr
    assert (tmp_path / "sw" / "multirun.1.yaml").read_text() == first
    assert "dataset.noise=0.2" in (tmp_path / "sw" / "multirun.yaml").read_text()
    for job in jobs:  # the jobs' files as they were
        assert all(p.read_bytes() == b for p, b in before.items() if job in p.parents)


def test_job_folders_of_a_sweep_over_long_keys_fit_a_file_name(tmp_path):
    """A sweep whose override list passes 255 bytes: each job's folder is cut with a hash of the whole list."""
    long = [f"+hessian.a_rather_long_note_key_{k}={'x' * 40}" for k in range(5)]
    out = run(tmp_path, "-m", *TINY, "lr=0.1,0.2", "hydra.sweep.dir=sw", *long)
    assert out.returncode == 0, out.stderr
    jobs = find_runs(tmp_path / "sw")
    assert len(jobs) == 2 and all(len(j.name.encode()) <= 255 for j in jobs) and jobs[0].name != jobs[1].name
    assert sorted(load_run(j).config["optim"]["lr"] for j in jobs) == [0.1, 0.2]


def test_joblib_sweep_of_four_jobs(tmp_path):
    """hydra/launcher=joblib runs the jobs in 2 worker processes, cores shared among them; each job's numbers
    equal those of the same run made alone with the same thread count."""
    lrs = ("0.01", "0.02", "0.03", "0.04")
    out = run(tmp_path, "-m", *TINY, f"lr={','.join(lrs)}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert out.returncode == 0, out.stderr
    runs = [load_run(p) for p in find_runs(tmp_path / "outputs" / "sweeps")]
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert sorted(str(r.config["optim"]["lr"]) for r in runs) == list(lrs)
    assert all(r.status == "completed" and r.summary["environment"]["torch_threads"] == threads for r in runs)
    alone = run(tmp_path, *TINY, "lr=0.03", f"threads={threads}", "hydra.run.dir=alone")
    assert alone.returncode == 0, alone.stderr
    (job,) = [r.path for r in runs if r.config["optim"]["lr"] == 0.03]
    for name in ("metrics.csv", "loss.csv", "spectra/step_20.npz"):
        assert (job / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
SUBMITIT = ["hydra/launcher=submitit_local", "threads=1", "hydra.launcher.timeout_min=5"]


@pytest.mark.parametrize(
    "sig,group,launcher",
    [
        (signal.SIGTERM, False, JOBLIB),
        pytest.param(signal.SIGKILL, False, JOBLIB, marks=pytest.mark.slow),  # the same path as SIGTERM's
        (signal.SIGINT, True, JOBLIB),
        pytest.param(signal.SIGTERM, False, SUBMITIT, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, True, SUBMITIT, marks=pytest.mark.slow),
    ],
    ids=["joblib-term", "joblib-kill", "joblib-ctrl-c", "submitit-term", "submitit-ctrl-c"],
)
def test_a_stopped_parallel_sweep_leaves_no_job_running(tmp_path, sig, group, launcher):
    """A parallel sweep (joblib's 2 workers; submitit's local executor, a process per job) stopped while 2 jobs
    train (SIGTERM or SIGKILL to the sweep's process alone, as `timeout` and schedulers send; Ctrl-C to the
    whole process group): each job in progress records `interrupted`, the jobs still queued never start, and
    no job is left running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lrs = "lr=0.01,0.02,0.03,0.04" if launcher is JOBLIB else "lr=0.01,0.02"  # submitit starts every job at once
    sweep = ["-m", *TINY, lrs, "steps=1000000", "hessian.every=1000000", *launcher, "hydra.sweep.dir=sw"]
    proc = subprocess.Popen(
        [command("sane-run"), *sweep], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip

    def training() -> list:
        return [p for p in tmp_path.glob("sw/*/metrics.csv") if len(p.read_text().splitlines()) > 2]

    try:
        deadline = time.time() + 120
        while len(training()) < 2:
            assert time.time() < deadline and proc.poll() is None, "the jobs ended or did not start"
            time.sleep(0.2)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == -sig if sig == signal.SIGKILL else 128 + sig
        deadline = time.time() + 60
        while any(load_run(p).status == "running" for p in find_runs(tmp_path / "sw")):
            assert time.time() < deadline, "a job did not record its stop"
            time.sleep(0.2)
        time.sleep(2)  # a worker left behind would start a queued job, or go on writing
        sizes = {p: p.stat().st_size for p in tmp_path.glob("sw/*/*.csv")}
        time.sleep(1)
        assert sizes == {p: p.stat().st_size for p in tmp_path.glob("sw/*/*.csv")}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # never leave million-step jobs behind a failed test
    runs = [load_run(p) for p in find_runs(tmp_path / "sw")]
    assert len(runs) == 2 and {r.status for r in runs} == {"interrupted"}
    # a joblib worker stops itself by SIGTERM once the sweep is gone; submitit's controller passes a SIGTERM on
    stopped_by = {sig.name, "SIGTERM"} if launcher is SUBMITIT else {"SIGTERM" if sig == signal.SIGKILL else sig.name}
    assert all(r.summary["error"].split()[0] in stopped_by for r in runs)


def test_submitit_sweep_through_its_local_executor(tmp_path):
    """hydra/launcher=submitit_local: the SLURM launcher's code path, each job a process started by submitit;
    the jobs' numbers equal those of the same runs made alone."""
    out = run(tmp_path, "-m", *TINY, "lr=0.03,0.04", "threads=1", "hydra/launcher=submitit_local",
              "hydra.sweep.dir=sweep", "hydra.launcher.timeout_min=5")  # fmt: skip
    assert out.returncode == 0, out.stderr
    runs = [load_run(p) for p in find_runs(tmp_path / "sweep")]
    assert sorted(r.config["optim"]["lr"] for r in runs) == [0.03, 0.04] and {r.status for r in runs} == {"completed"}
    alone = run(tmp_path, *TINY, "lr=0.04", "threads=1", "hydra.run.dir=alone")
    assert alone.returncode == 0, alone.stderr
    (job,) = [r.path for r in runs if r.config["optim"]["lr"] == 0.04]
    for name in ("metrics.csv", "loss.csv", "spectra/step_20.npz"):
        assert (job / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name


def test_slurm_launcher_config_composes_with_its_documented_keys(tmp_path):
    out = run(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
              "--cfg", "hydra", "--package", "hydra.launcher")  # fmt: skip
    assert out.returncode == 0, out.stderr
    import yaml

    launcher = yaml.safe_load(out.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1
    assert launcher["max_num_timeout"] == 3 and launcher["timeout_min"] == 240 and launcher["mem_gb"] == 16


def test_a_cluster_that_refuses_the_sweep_is_one_line(tmp_path, monkeypatch):
    """SLURM's sbatch refusing the submission (a partition that does not exist): the sweep ends with exit 1 and
    one line of sane-run's naming SLURM's reason, not submitit's traceback."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = run(tmp_path, "-m", *TINY, "lr=0.1,0.2", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    ours = [ln for ln in out.stderr.splitlines() if ln.startswith("sane-run:")]
    assert ours == [ln for ln in ours if "sbatch: error: invalid partition specified: gpu" in ln] and len(ours) == 1


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="the Ray launcher is not installed (pip install -e '.[ray]'); not part of the test extra",
)
def test_ray_sweep(tmp_path):
    out = run(tmp_path, "-m", *TINY, "lr=0.03,0.04", "hydra/launcher=ray", "hydra.sweep.dir=sweep")
    assert out.returncode == 0, out.stderr
    assert {load_run(p).status for p in find_runs(tmp_path / "sweep")} == {"completed"}


def test_divergence_exits_0(tmp_path):
    out = run(tmp_path, *TINY, "lr=500")
    assert out.returncode == 0, out.stderr
    (path,) = find_runs(tmp_path)
    assert load_run(path).status == "diverged"


def test_report_tables_the_runs(tmp_path):
    assert run(tmp_path, "-m", *TINY, "lr=0.05,0.1").returncode == 0
    out = run(tmp_path, "outputs", name="sane-report")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "outputs" / "report" / "summary.csv").is_file()
    missing = run(tmp_path, "nowhere", name="sane-report")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("sane-report: error: nowhere does not exist")

    # through the command: damaged records cost their own values, never the report
    first, second = find_runs(tmp_path / "outputs" / "sweeps")
    lines = (first / "hessian.csv").read_text().splitlines(keepends=True)
    (first / "hessian.csv").write_text("".join(lines[:-1]))  # the last whole row lost
    summary = json.loads((second / "summary.json").read_text())
    summary["config"]["optim"]["lr"] = "fast"
    (second / "summary.json").write_text(json.dumps(summary))
    out = run(tmp_path, "outputs", "-o", "rep", name="sane-report")
    assert out.returncode == 0, out.stderr
    assert "hessian.csv's last checkpoint is at step 10, summary.json's at step 20" in out.stderr
    assert "summary.json's config has optim.lr = 'fast', not a number" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "a_file").write_text("")
    refused = run(tmp_path, "outputs", "-o", "a_file", name="sane-report")
    assert refused.returncode == 2 and "is a file; choose a folder" in refused.stderr


def test_a_linear_model_records_no_width(tmp_path):
    out = run(tmp_path, "-m", *TINY, "depth=1", "width=4,8")
    assert out.returncode == 0, out.stderr
    assert [load_run(p).config["model"]["width"] for p in find_runs(tmp_path)] == [None, None]


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.8, 1.5])
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc to see the handler")
def test_a_signal_during_start_up_ends_in_one_line_and_leaves_no_orphan_folder(tmp_path, delay):
    """SIGTERM at any moment of start-up once sane-run's code runs (imports, Hydra composing, the data
    loading; Python's own start-up before it, tens of milliseconds, ends by the signal's default action):
    one line, exit 143, and either no folder at all or a claimed run folder (summary.json) that can be
    resumed, never a folder holding only Hydra's run.log. ``delay`` counts from the handler's installation,
    so that a loaded machine tests the same moments."""
    folder = tmp_path / "run"
    proc = subprocess.Popen(
        [command("sane-run"), *TINY, "steps=1000000", "hessian.every=1000000", f"hydra.run.dir={folder}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not _catches(proc.pid, signal.SIGTERM):
            assert time.time() < deadline and proc.poll() is None, "sane-run did not start"
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 128 + signal.SIGTERM and len(lines) == 1, err
    assert lines[0].startswith("sane-run: stopped by SIGTERM "), err
    assert not folder.exists() or (folder / "summary.json").is_file(), sorted(p.name for p in folder.iterdir())


def _user_configs(folder):
    """A researcher's own config folder: an experiment and a primary config that extends the packaged one."""
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    (folder / "study.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 9\n")
    return folder


@pytest.mark.parametrize(
    "options",
    [["--config-dir", "cd"], ["-cd", "cd"], ["--config-dir=cd"], ["hydra.searchpath=[file://{cd}]"]],
    ids=["config-dir", "cd", "config-dir=", "searchpath"],
)
def test_the_users_config_folder_composes_with_the_packaged_configs(tmp_path, monkeypatch, options):
    """Hydra's config-folder options, checked before the run (an option of the user's folder is known, a
    misspelt one named with the user's among the choices) and then run."""
    monkeypatch.chdir(tmp_path)
    cd = _user_configs(tmp_path / "cd")
    options = [o.format(cd=cd) for o in options]
    with pytest.raises(UsageError, match=r"experiment='nope' is unknown; choose one of .*\blr_sweep\b.*\bmine\b"):
        precheck([*options, "experiment=nope"])
    precheck([*options, *TINY, "experiment=mine"])
    for argv, message in [
        (["--config-dir", "nowhere"], r"--config-dir nowhere is not a folder"),
        (["-cp", "/nowhere"], r"--config-path /nowhere is not a folder; it replaces the packaged configs"),
        (["-cd", "cd", "-cn", "stduy"], r"--config-name stduy is unknown; choose one of config, study$"),
        (["hydra.searchpath=[file:///nowhere]"], r"hydra.searchpath: file:///nowhere is not a folder"),
        (["-cp", str(cd), "-cn", "study"], r"dataset='synthetic' is unknown: the config search path has no dataset"),
        (["-cp", str(cd)], r"--config-name config is unknown; choose one of study \(--config-path replaces the"),
    ]:
        with pytest.raises(UsageError, match=message):
            precheck([*argv, *TINY])
    if options[0] in ("--config-dir", f"hydra.searchpath=[file://{cd}]"):  # one of each through the command
        out = run(tmp_path, *options, *TINY, "experiment=mine", "hydra.run.dir=mine")
        assert out.returncode == 0, out.stderr
        assert load_run(tmp_path / "mine").config["seed"] == 7


def test_a_primary_config_of_the_users_own(tmp_path):
    """``--config-name`` (``-cn``) with ``--config-dir``: a primary config that extends the packaged one."""
    _user_configs(tmp_path / "cd")
    out = run(tmp_path, "-cd", "cd", "-cn", "study", *TINY, "hydra.run.dir=study")
    assert out.returncode == 0, out.stderr
    assert load_run(tmp_path / "study").config["seed"] == 9


@contextlib.contextmanager
def small_disk(folder, kib: int, free_kib: int):
    """A file system of ``kib`` KiB at ``folder`` with ``free_kib`` left free (a tmpfs: needs the right to mount)."""
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small file system here ({made.stderr.decode().strip()[:80]})")
    try:
        (folder / "fill").write_bytes(b"\0" * ((kib - free_kib) * 1024))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("free_kib", [0, 172, 272, 400])
def test_a_nearly_full_disk_at_the_start(tmp_path, free_kib):
    """A real nearly full disk: below the room a run needs to record its end, one line and exit 2 before any
    folder is made; above it, a run that fills the disk ends with status failed and the error recorded."""
    with small_disk(tmp_path / "disk", 480, free_kib) as disk:
        out = run(tmp_path, *TINY, "model.width=200", "hessian.topk_vectors=20", f"hydra.run.dir={disk / 'run'}")
        if free_kib < 320:
            assert out.returncode == 2 and out.stderr.startswith("sane-run: error: no room for a run in "), out.stderr
            assert len(out.stderr.strip().splitlines()) == 1 and not (disk / "run").exists()
        else:
            summary = json.loads((disk / "run" / "summary.json").read_text())
            assert out.returncode == 1 and summary["status"] == "failed", (out.stderr, summary["status"])
            assert "No space left on device" in summary["error"] and not (disk / "run" / ".summary.reserve").exists()
