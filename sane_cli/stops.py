"""Stops by signal outside a run's training loop (where :mod:`sane_cli.signals` stops it): before a job claims its
folder, and the stops of parallel sweeps, whose jobs run in processes of their own.

A Ctrl-C reaches a sweep's process and its jobs together; a SIGTERM or SIGKILL sent to the sweep's process alone
(``kill``, ``timeout``, a scheduler) does not. So a worker process of joblib's launcher watches for the sweep's
process to be gone and then stops itself (:func:`guard_worker`), and the sweep's process passes a SIGTERM on to
submitit's local job controllers (:func:`stop_at_start`). Either way every job in progress records where it
got to, and no queued job starts.

Standard library only: imported at the start of every ``sane-run``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .signals import STOP_SIGNALS, forget_stop, stopping

job: dict[str, Path | None] = {"dir": None}  # the folder Hydra made for the job being run (None between jobs)


def remove_unclaimed(run_dir: Path) -> None:
    """The folder Hydra made for a job that never claimed it (no summary.json): its run.log, and the folder if
    that leaves it empty (with the empty folders above it, where it lies inside another run's folder). A folder
    that holds a run, another's or this one's, is left as it is."""
    if not (run_dir / "summary.json").exists():
        with contextlib.suppress(OSError):
            (run_dir / "run.log").unlink(missing_ok=True)
            inside = next((p for p in run_dir.absolute().parents if (p / "summary.json").exists()), None)
            _remove_empty(run_dir, inside)


def remove_unclaimed_sweep(sweep_dir: Path, inside: Path) -> None:
    """A sweep's folder that Hydra made inside the run folder ``inside``: its multirun.yaml, and the folders up
    to ``inside`` where that leaves them empty (the jobs' own folders are removed by :func:`remove_unclaimed`)."""
    with contextlib.suppress(OSError):
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
        _remove_empty(sweep_dir, inside)


def _remove_empty(folder: Path, inside: Path | None) -> None:
    """``folder`` if empty, then each folder above it up to ``inside`` (not itself) while empty; ``folder`` alone
    where ``inside`` is None. Stops at the first that is not empty (OSError)."""
    folder = folder.absolute()
    folder.rmdir()
    for parent in folder.parents if inside is not None else ():
        if parent == inside:
            break
        parent.rmdir()


def in_sweep_worker() -> bool:
    """Whether this process is a worker process of a parallel sweep (joblib's launcher), which runs the jobs the
    sweep's own process hands it."""
    return multiprocessing.parent_process() is not None


_worker: dict[str, int] = {}  # a sweep worker's parent: the sweep's process


def guard_worker() -> None:
    """Stops in a worker process of a parallel sweep. A Ctrl-C reaches the workers with the sweep's process; a
    SIGTERM or SIGKILL sent to the sweep's process alone (``kill``, ``timeout``, a scheduler) does not, so each
    worker watches for its parent to be gone and then stops itself by SIGTERM: the job in progress records
    where it got to as any stopped run does, and the worker ends rather than start the jobs still queued
    for it. Outside training, a signal ends the worker at once (:func:`_worker_stop`)."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _worker_stop)

    forget_stop()  # a new job: no stop under way
    watch_sweep()


def watch_sweep() -> None:
    """In a sweep worker, from its start (the initializer of each worker's pool, and again as a job starts): a
    thread that stops the worker by SIGTERM once the sweep's process is gone, so that a worker whose sweep was
    stopped before it took a job does not wait for one for ever, nor start one. The sweep's process is the one
    that started the worker (its pid from multiprocessing, not the parent now: a worker may be orphaned already)."""
    if "parent" not in _worker:
        parent = multiprocessing.parent_process()
        _worker["parent"] = parent.pid if parent is not None and parent.pid else os.getppid()
        threading.Thread(target=_watch_sweep, daemon=True, name="sane-run sweep watch").start()


def sweep_gone(wait: float = 0.0) -> bool:
    """Whether the sweep's process is gone, waiting up to ``wait`` seconds for it to go (a Ctrl-C reaches it and
    the workers at once, but a worker may finish stopping its job first)."""
    deadline = time.monotonic() + wait
    while "parent" in _worker and os.getppid() == _worker["parent"]:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return "parent" in _worker


def _recording_stop() -> bool:
    """Whether a job runs whose stop by signal is being recorded."""
    return job.get("dir") is not None and stopping() is not None


def _watch_sweep() -> None:
    """Once the sweep's process is gone, SIGTERM to this worker: now if it is between jobs or running one, after
    the job's record is written if a signal already stopped it."""
    while not sweep_gone():
        time.sleep(0.5)
    while _recording_stop():
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_stop(signum, _frame):
    """A sweep worker's handler outside training: a job whose stop is being recorded finishes that (the worker
    ends after it); a job not yet training ends at once, its unclaimed folder removed; between jobs the worker
    ends."""
    if _recording_stop():
        return
    if job.get("dir") is not None:
        remove_unclaimed(job["dir"])
        say(f"sane-run: stopped by {signal.Signals(signum).name} before training started")
    # with a Ctrl-C the sweep's process goes first (its account of the jobs is not wanted then); a worker stopped
    # alone ends, and the sweep counts its job as killed and goes on with a new worker (sweeps.run_apart)
    sweep_gone(wait=2.0)
    end_worker(128 + int(signum))


def end_job(code: int) -> None:
    """After a job stopped by signal (``code`` = 128 + the signal): in a sweep worker whose sweep's process is
    gone (waiting a little for it, :func:`sweep_gone`), end the worker at once, so that it takes no queued job;
    otherwise return, and the job ends as any run does."""
    if sweep_gone(wait=2.0):
        end_worker(code)


def end_worker(code: int) -> None:
    """End a sweep worker process now (its streams flushed), so that it takes no further job."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def say(line: str) -> None:
    """``line`` on stderr, where there is one: after a SIGHUP the terminal may be gone (a write fails), and the
    stop must still be recorded and the exit status given."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


def stop_at_start(signum, _frame):
    """SIGTERM or Ctrl-C before a run claimed its folder: nothing to save, so one line and out at once. Not by
    raising (an exception raised while torch's C++ code imports aborts the process with a C++ traceback);
    a folder Hydra made for the job (holding only its run.log) is removed."""
    name = signal.Signals(signum).name
    if job.get("dir") is not None:
        remove_unclaimed(job["dir"])
    controllers = _local_job_controllers()
    for pid in controllers:  # submitit's local jobs: each controller stops its job by SIGTERM, as on preemption
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    if controllers or multiprocessing.active_children():  # joblib's workers stop their jobs (guard_worker)
        say(
            f"sane-run: the sweep stopped by {name}; each job in progress records where it got to (continue: run "
            "the sweep again with the same hydra.sweep.dir)"
        )
    else:
        say(f"sane-run: stopped by {name} before training started")
    os._exit(128 + int(signum))


def _local_job_controllers() -> list[int]:
    """The processes of this one that control a job of submitit's local executor (``hydra/launcher=
    submitit_local``), which would run on when this process is stopped alone; found in /proc (Linux; none
    elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                if b"submitit.local._local" in (stat.parent / "cmdline").read_bytes():
                    found.append(int(stat.parent.name))
    return found
