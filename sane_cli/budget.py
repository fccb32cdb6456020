"""The memory that Lanczos and SLQ may keep of their Lanczos vectors, and what they do within it.

Full reorthogonalisation keeps every Lanczos vector: SLQ's ``steps x probes x P`` numbers (26 GB a probe at 11
million parameters and 300 steps in float64), Lanczos's up to ``max_iter + 1`` of P. ``hessian.memory_gb`` (null:
80 % of the memory the device has free) bounds them, and :func:`plan` picks, in this order, the first that fits:

1. as configured: every probe at once (one batched Hessian-vector product a step for all of them);
2. fewer probes at a time (groups of the same probes, the same seeds: the same numbers but for rounding, at the
   cost of less batching);
3. the vectors kept in float32, the recurrence in float64 and the reorthogonalisation against them in float32 (a
   float64 run's vectors at half the memory; they are then orthogonal to float32's rounding, 6e-8, far below
   SLQ's statistical error);
4. on a GPU, the vectors kept in the host's memory (within :data:`SHARE` of what the host has free; in the run's
   dtype, then float32), the GPU holding the probes, the work vectors and a chunk of the kept ones at a time as
   the reorthogonalisation reads them: the same numbers, at the cost of reading the vectors over the bus each
   step;
5. fewer steps (down to :data:`MIN_STEPS`), on the device, then on the host: a quadrature of lower degree, whose
   bias bound (reported, as ever) is then wider; Lanczos's top eigenpairs get fewer iterations (its
   ``converged`` says whether they sufficed).

None fits: the run is refused before it starts, naming ``hessian.memory_gb``. The plan, where it is not the
configured one, is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MIN_STEPS = 40  # the fewest SLQ steps a plan takes: below, the quadrature's bias outgrows its standard error
SHARE = 0.8  # of the free memory, where hessian.memory_gb is not given


@dataclass(frozen=True)
class Plan:
    """How a checkpoint's Lanczos and SLQ run: ``group`` probes at a time, their vectors kept in ``store``,
    ``steps`` SLQ steps and at most ``max_iter`` Lanczos iterations; ``need`` bytes of ``budget``."""

    group: int
    store: torch.dtype
    steps: int
    max_iter: int
    need: int
    budget: int
    changes: tuple[str, ...] = ()  # what differs from the config, in words
    host: bool = False  # the kept vectors in the host's memory (a GPU run), ``host_need`` bytes of it
    host_need: int = 0

    @property
    def store_device(self) -> str | None:
        """Where the solvers keep their vectors: the host ("cpu"), or None for the arithmetic's device."""
        return "cpu" if self.host else None

    def describe(self) -> str:
        host = f", {_gib(self.host_need)} in the host's memory" if self.host else ""
        return f"{', '.join(self.changes)} ({_gib(self.need)} of hessian.memory_gb's {_gib(self.budget)}{host})"


def free_memory(device) -> int:
    """Bytes the device has free: a GPU's free memory, or the host's available memory (MemAvailable), within
    what the process's control group (a SLURM job's, a container's) still allows."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        import os

        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    room = cgroup_room()
    return available if room is None else min(available, room)


def cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the process's control group may still take (cgroup v2: memory.max - memory.current), None where it
    sets no limit or there is none."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def budget(hcfg, device) -> int:
    """Bytes the Lanczos vectors may take: ``hessian.memory_gb``, or :data:`SHARE` of the device's free memory."""
    given = hcfg.get("memory_gb")
    return int(float(given) * 2**30) if given is not None else int(SHARE * free_memory(device))


def host_budget(device) -> int | None:
    """Bytes of the host's memory a GPU run's kept vectors may take (:data:`SHARE` of what it has free, shared by
    the ranks of a data-parallel job on this machine); None on the CPU, whose memory is the device's."""
    if torch.device(device).type != "cuda":
        return None
    from . import distributed

    return int(SHARE * free_memory("cpu")) // max(1, distributed.current().local_size)


def _bytes(hcfg, p: int, dtype, group: int, store, steps: int, max_iter: int, slq: bool,
           trace: bool) -> tuple[int, ...]:  # fmt: skip
    """(kept, work) bytes of Lanczos's phase for the top eigenpairs, then of SLQ's (0, 0 without SLQ)."""
    from .iterative import HUTCHINSON_BATCH

    k = max(int(hcfg.topk_vectors), int(hcfg.k), int(hcfg.topk))
    item, kept = dtype.itemsize, store.itemsize
    ritz = p * k * (8 + item)
    probes = int(hcfg.probes)
    top = (max_iter + 1) * p * kept  # Lanczos's rows at their most (its blocks are never copied)
    if not slq:  # lanczos's trace: its probes and their work, deflated by Lanczos's rows while they are kept
        work = probes * p * item + 4 * min(probes, HUTCHINSON_BATCH) * p * item if trace else 0
        return top, ritz + work, 0, 0
    work = ritz + probes * p * item + 4 * group * p * item
    if hcfg.reorth != "full":  # the recurrence's two vectors stay with the arithmetic
        return top, ritz, 0, work + 2 * group * p * kept
    return top, ritz, steps * group * p * kept, work


def need(hcfg, p: int, dtype: torch.dtype, group: int, store: torch.dtype, steps: int, max_iter: int,
         slq: bool = True, host: bool = False, trace: bool = False) -> int:  # fmt: skip
    """Bytes of one checkpoint's Lanczos vectors on the device: the larger of Lanczos's for the top eigenpairs
    (and their Ritz vectors, in float64; for lanczos alone, with the trace's probes, deflated by the kept rows)
    and SLQ's (its probes, each group's kept vectors, the deflated eigenvectors and a few vectors of work per
    probe; ``trace``: lanczos's trace, its probes). ``host``: the kept vectors in the host's memory
    (:func:`host_need`), two chunks of them at a time on the device (one read while the last is used)."""
    kept_top, work_top, kept_slq, work_slq = _bytes(hcfg, p, dtype, group, store, steps, max_iter, slq, trace)
    if host:
        from .iterative import CHUNK

        chunk = max(CHUNK, group * p if slq else p)  # at least a row (a step of the group's rows) at a time
        return max(work_top, work_slq) + 2 * chunk * max(store.itemsize, dtype.itemsize)
    return max(kept_top + work_top, kept_slq + work_slq)


def host_need(hcfg, p: int, dtype: torch.dtype, group: int, store: torch.dtype, steps: int, max_iter: int,
              slq: bool = True) -> int:  # fmt: skip
    """Bytes of the host's memory the kept vectors take in a plan that keeps them there."""
    kept_top, _, kept_slq, _ = _bytes(hcfg, p, dtype, group, store, steps, max_iter, slq, False)
    return max(kept_top, kept_slq)


def plan(
    hcfg,
    p: int,
    dtype: torch.dtype,
    limit: int,
    *,
    slq: bool = True,
    host_limit: int | None = None,
    trace: bool = False,
) -> Plan | None:
    """The first of the module docstring's plans whose :func:`need` fits in ``limit`` bytes (and, for those that
    keep the vectors in the host's memory, :func:`host_need` in ``host_limit``: given for a GPU run); None if none
    does. ``slq``: SLQ runs after Lanczos (hessian=slq); else Lanczos alone, with its trace's probes where
    ``trace`` (hessian=lanczos)."""
    probes, steps, max_iter = int(hcfg.probes), min(int(hcfg.steps), p), min(int(hcfg.max_iter), p)
    narrow = [dtype] if dtype == torch.float32 else [dtype, torch.float32]
    places = [False] if host_limit is None else [False, True]

    def fits(group: int, store, s: int, it: int, host: bool) -> Plan | None:
        bytes_ = need(hcfg, p, dtype, group, store, s, it, slq, host, trace)
        held = host_need(hcfg, p, dtype, group, store, s, it, slq) if host else 0
        if bytes_ > limit or (host and held > host_limit):
            return None
        changes = [f"{group} of the {probes} probes at a time" if group < probes else "",
                   "the Lanczos vectors kept in float32" if store != dtype else "",
                   "the Lanczos vectors kept in the host's memory" if host else "",
                   f"{s} SLQ steps of {steps}" if slq and s < steps else "",
                   f"at most {it} Lanczos iterations of {max_iter}" if it < max_iter else ""]  # fmt: skip
        return Plan(group, store, s, it, bytes_, limit, tuple(c for c in changes if c), host, held)

    for host in places:
        for store in narrow:
            for group in sorted({probes, *(g for g in (8, 4, 2, 1) if g < probes)}, reverse=True) if slq else [probes]:
                if chosen := fits(group, store, steps, max_iter, host):
                    return chosen
    for host in places:
        for fewer in range(min(steps, max_iter), MIN_STEPS - 1, -10):
            if chosen := fits(1 if slq else probes, torch.float32, min(steps, fewer), min(max_iter, fewer), host):
                return chosen
    return None


def least(hcfg, p: int, dtype: torch.dtype, *, slq: bool = True) -> int:
    """Bytes of the smallest plan on the device: one probe at a time, float32 vectors, :data:`MIN_STEPS` steps."""
    s = min(MIN_STEPS, int(hcfg.steps), p)
    return need(hcfg, p, dtype, 1, torch.float32, s, min(int(hcfg.max_iter), MIN_STEPS, p), slq)


_said: set[str] = set()


def device_plan(hcfg, p: int, dtype: torch.dtype, device, *, slq: bool = True, trace: bool = False) -> Plan:
    """The plan on ``device`` within its budget (and, on a GPU, the host's): :func:`plan` (``slq``, ``trace`` as
    there) with the budgets read now.

    Raises:
        UsageError: not even the smallest plan fits (:func:`refusal`'s line).
    """
    from .errors import UsageError

    limit, host = budget(hcfg, device), host_budget(device)
    chosen = plan(hcfg, p, dtype, limit, slq=slq, host_limit=host, trace=trace)
    if chosen is None:
        raise UsageError(refusal(hcfg, p, dtype, limit, slq=slq, host_limit=host))
    return chosen


def checkpoint_plan(hcfg, p: int, dtype: torch.dtype, device, *, slq: bool = True, trace: bool = False) -> Plan:
    """The plan of a checkpoint on ``device`` (:func:`device_plan`), logged once where it is not the configured one.

    Raises:
        UsageError: not even the smallest plan fits (:func:`sane_cli.methods.check_memory` refuses such a run
            before it starts, but the device's free memory may have shrunk since).
    """
    chosen = device_plan(hcfg, p, dtype, device, slq=slq, trace=trace)
    if chosen.changes:
        line = f"hessian: the Lanczos vectors of {p:,} parameters within memory: {chosen.describe()}"
        if line not in _said:
            _said.add(line)
            log.info(line)
    return chosen


def refusal(hcfg, p: int, dtype: torch.dtype, limit: int, *, slq: bool = True, host_limit: int | None = None) -> str:
    """The one line that refuses a run whose Lanczos vectors fit no plan (on a GPU, nor the host's memory)."""
    what = f"SLQ's {hcfg.probes} probes and the Lanczos vectors" if slq else "Lanczos's vectors"
    given = hcfg.get("memory_gb")
    where = f"hessian.memory_gb={given}" if given is not None else f"{SHARE:.0%} of the free memory, {_gib(limit)}"
    if host_limit is not None:
        where += f" (and {_gib(host_limit)} of the host's memory, which cannot hold them either)"
    return (f"hessian.method={'slq' if slq else 'lanczos'} needs at least {_gib(least(hcfg, p, dtype, slq=slq))} "
            f"for {what} of {p:,} parameters ({MIN_STEPS} steps, one probe at a time, kept in float32); the budget "
            f"is {where}: raise hessian.memory_gb (or free memory), or lower hessian.probes")  # fmt: skip


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
