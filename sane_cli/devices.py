"""Where a run computes: ``device=auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "float64")  # training's (the top-level ``precision``)


def resolve_device(name: str):
    """The torch device ``name`` means here: ``auto`` is CUDA when available, else the CPU; ``cuda`` without a
    GPU is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' is invalid: no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def usable_cores() -> int:
    """The CPUs this process may use: those of its affinity (a SLURM job's allocation, ``taskset``), fewer where
    a cgroup quota (a container's ``--cpus``, a SLURM job's cgroup) gives it less time than that, at least 1."""
    import math
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2's ``cpu.max``, v1's ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``); None without a quota or where none can be read."""
    from pathlib import Path

    try:
        quota, period = (Path(root) / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((Path(root) / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((Path(root) / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


SPIN_COUNT = "3000"  # GNU OpenMP's busy-wait before a waiting thread sleeps (its own default: 300,000)


def short_spin() -> None:
    """OpenMP's idle threads spin briefly, then sleep (``GOMP_SPINCOUNT`` 3,000 in place of GNU OpenMP's
    300,000, unless the user set it or ``OMP_WAIT_POLICY``). Spinning threads hold a core each between torch's
    parallel regions; where another process wants the same cores (a second run, another user's job on a shared
    node) the two sets of threads spin against each other. Measured with benchmarks/contention.py on 2 cores
    beside a 2-thread job: the default run 88.2 s with the runtime's spin, 50.4 s with this one, 54.4 s with
    threads that never spin (``OMP_WAIT_POLICY=PASSIVE``), which on a quiet machine cost 30.7 s against 22.4 s
    (a wake-up is paid on every small parallel region); quiet, this spin costs nothing (22.4 s, 21.9 s). Read
    by the OpenMP runtime when it starts, so set before torch is imported; the processes started from this one
    (a sweep's workers) inherit it."""
    import os

    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
