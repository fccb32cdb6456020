"""Where a run computes: ``device=auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


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


def passive_waits() -> None:
    """OpenMP's threads sleep, not spin, while they wait for work (``OMP_WAIT_POLICY=PASSIVE``, unless the user
    set it). Spinning threads hold a core each between torch's parallel regions; where another process wants the
    same cores (a second run, another user's job on a shared node) the two sets of threads then spin against each
    other, and a run of 20 s took 182 s beside one other 2-thread process (benchmarks/contention.py). Read by
    the OpenMP runtime when it starts, so set before torch is imported; the processes started from this one (a
    sweep's workers) inherit it."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
