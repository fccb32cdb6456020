"""A sweep that survives its failures: each job's outcome, the sweep's account of them, and parallel jobs kept
apart so that one job's failure or stop never ends the others.

A job of a sweep never ends the sweep: the Hydra app returns the job's :func:`outcome` (its folder, its status,
one line on what happened) rather than exit, whether the job completed, failed, or was stopped by a signal sent
to it alone. The sweeper (``hydra_plugins.sane_run.SaneSweeper``) gathers them and :func:`account` says at the
end one line per job that did not end and one summary line, and gives the exit status. A stop of the sweep
itself (Ctrl-C, a SIGTERM to the sweep's process) still stops every job (:mod:`sane_cli.stops`).

Jobs that run in other processes can die without a word (the kernel's out-of-memory killer, a SIGKILL, a SLURM
job cancelled): :func:`run_apart` runs joblib's jobs each in a worker of its own, so that a dead worker takes
only its job with it, and :func:`gathered` collects submitit's results one job at a time; either way the job
is accounted for as ``killed``.

Standard library only at import: Hydra's plugin scan imports this at every start.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# a failed job of a sweep run with hydra.sweeper.stop_on_failure=true leaves this in the sweep's folder; the jobs
# that start after it see it and do not run
STOP_MARK = ".sane-run-stop"

# the order in which the summary line counts outcomes
ORDER = ("completed", "converged", "diverged", "refused", "failed", "interrupted", "killed", "not run")
# outcomes of jobs that did not end: the sweep exits 1 (2 where a job was refused, as a command line is) and a
# start with the same hydra.sweep.dir takes them up
UNFINISHED = ("refused", "failed", "interrupted", "killed", "not run")

# the thread pools' sizes joblib sets in its workers' environment
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip

_sweep: dict[str, Any] = {"pid": None}  # the process the sweep being run was started in (the sweeper's)
outcomes: list[dict[str, str]] = []  # the last sweep's outcomes, in job order, for the command's account


def outcome(run_dir: Path | str, status: str, line: str = "") -> dict[str, str]:
    """A job's outcome, as the app returns it to the launcher: plain strings, so that any launcher can carry it
    back from another process or machine (pickled by joblib, submitit and Ray)."""
    return {"dir": str(run_dir), "status": status, "line": line}


def begin(sweep_dir: Path) -> None:
    """The sweep's process starts a sweep into ``sweep_dir``: a stop mark an earlier start left is removed (this
    start runs the jobs that one did not), and jobs run in this process are known to be the sweep's own."""
    _sweep["pid"] = os.getpid()
    outcomes.clear()
    end(sweep_dir)


def end(sweep_dir: Path) -> None:
    """The sweep's jobs have ended: the stop mark a failed job left (``stop_on_failure``) is not kept."""
    with contextlib.suppress(OSError):
        (Path(sweep_dir) / STOP_MARK).unlink()


def in_sweep_process() -> bool:
    """Whether this process is the sweep's own (Hydra's basic launcher runs the jobs one after another in it): a
    signal it receives stops the sweep, not one job."""
    return _sweep["pid"] == os.getpid()


def mark_stop(sweep_dir: Path, run_dir: Path) -> None:
    """A job failed in a sweep that stops at the first failure: the jobs that start after this do not run."""
    with contextlib.suppress(OSError):
        (Path(sweep_dir) / STOP_MARK).write_text(f"{run_dir}\n")


def stopped_by_failure(sweep_dir: Path) -> str | None:
    """The folder of the failed job that stopped this sweep (``stop_on_failure``), or None."""
    try:
        return (Path(sweep_dir) / STOP_MARK).read_text().strip() or "a failed job"
    except OSError:
        return None


def account(found: Sequence[dict[str, str]]) -> tuple[list[str], int]:
    """The lines a sweep ends with, and its exit status: one line per job that did not end (its folder and what
    happened), then one that counts the jobs by outcome; 2 where a job was refused (what a bad command line
    gets), else 1 where any job did not end, else 0.

    >>> lines, code = account([outcome("sw/0_lr=0.1", "completed"), outcome("sw/1_lr=9", "failed", "ValueError: x")])
    >>> lines[-2], code
    ('sane-run: the sweep ran 2 jobs: 1 completed, 1 failed', 1)
    """
    lines = [f"sane-run: {o['status']}: {o['dir']}: {o['line']}" for o in found if o["status"] in UNFINISHED]
    counts = Counter(o["status"] for o in found)
    known = [s for s in ORDER if counts[s]] + sorted(set(counts) - set(ORDER))
    total = len(found)
    lines.append(f"sane-run: the sweep ran {total} job{'s' * (total != 1)}: " +
                 ", ".join(f"{counts[s]} {s}" for s in known))  # fmt: skip
    code = 2 if counts["refused"] else int(any(o["status"] in UNFINISHED for o in found))
    hints = []
    if counts["refused"]:
        hints.append("fix what each refused job's line names")
    if counts["interrupted"] or counts["killed"] or counts["not run"]:
        hints.append("run the sweep again with the same hydra.sweep.dir to continue the jobs that did not end")
    if counts["failed"]:
        hints.append("failed jobs are retried when the sweep is run again with hydra.sweeper.retry_failed=true")
    if hints:
        lines.append("sane-run: " + "; ".join(hints))
    return lines, code


def workers(n_jobs: int, cores: int) -> int:
    """The jobs run at a time for joblib's ``n_jobs``, counted as joblib counts them: -1 one per core, -2 all
    cores but one, and so on (0 is refused before the sweep starts).

    >>> workers(2, 16), workers(-1, 16), workers(-2, 16), workers(-40, 16)
    (2, 16, 15, 1)
    """
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def died(error: BaseException) -> str:
    """What a worker's death is called, from the error its pool raised: the signal that killed it, or that it
    ended itself on (exit 128 + the signal: a worker stopped before its job trained), where loky names them.

    >>> died(RuntimeError("The exit codes of the workers are {SIGKILL(-9)}"))
    'its process was killed (SIGKILL)'
    >>> died(RuntimeError("The exit codes of the workers are {EXIT(143)}"))
    'its process was stopped (SIGTERM) before the job trained'
    """
    import signal

    killed = re.search(r"\{(SIG\w+)", str(error))
    if killed:
        return f"its process was killed ({killed.group(1)})"
    code = re.search(r"\{EXIT\((\d+)\)", str(error))
    if code and 128 < int(code.group(1)) < 128 + signal.NSIG:
        return f"its process was stopped ({signal.Signals(int(code.group(1)) - 128).name}) before the job trained"
    return f"its process died ({type(error).__name__})"


def run_apart(calls: Sequence[Callable[[], Any]], n_workers: int, lost: Callable[[int, BaseException], Any]) -> list:
    """``calls`` run in ``n_workers`` worker processes, each worker a process pool of its own (loky's, as joblib
    uses), so that a worker that dies (killed by the out-of-memory killer or a signal) takes only the job it ran:
    that job's result is ``lost(i, error)``, a new worker takes its place, and the other jobs go on. Returns the
    results in the order of ``calls``."""
    from joblib.externals.loky import ProcessPoolExecutor
    from joblib.externals.loky.process_executor import BrokenProcessPool

    from .devices import usable_cores
    from .stops import watch_sweep

    # as joblib starts its workers: every thread pool's size (OpenMP's, BLAS's) set to the cores shared among them
    # before anything in the worker creates one, unless this process's environment sets it
    share = str(max(1, usable_cores() // max(1, n_workers)))
    env = {var: os.environ.get(var, share) for var in THREAD_VARIABLES}

    results: list[Any] = [None] * len(calls)
    queue = iter(range(len(calls)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        pool = None
        try:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None or errors:
                    return
                pool = pool or ProcessPoolExecutor(max_workers=1, env=env, initializer=watch_sweep)
                try:
                    results[i] = pool.submit(calls[i]).result()
                except BrokenProcessPool as e:  # its worker died: this job alone is lost
                    results[i] = lost(i, e)
                    pool.shutdown(wait=False)
                    pool = None
        except BaseException as e:  # noqa: BLE001 - raised in the sweep's thread below
            errors.append(e)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    threads = [threading.Thread(target=worker, name=f"sane-run worker {k}", daemon=True)
               for k in range(max(1, min(n_workers, len(calls))))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def gathered(jobs: Sequence[Any], lost: Callable[[int, BaseException], Any]) -> list:
    """The results of submitit's jobs, each waited for in turn; a job whose process died without one (killed,
    cancelled, out of its requeues) gives ``lost(i, error)`` rather than end the sweep before the others."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    results = []
    for i, job in enumerate(jobs):
        try:
            results.append(job.results()[0])
        except (UncompletedJobError, FailedJobError, OSError) as e:
            results.append(lost(i, e))
    return results
