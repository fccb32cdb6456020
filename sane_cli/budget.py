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
    """Bytes the device has free: a GPU's free memory, or the host's available memory (MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def budget(hcfg, device) -> int:
    """Bytes the Lanczos vectors may take: ``hessian.memory_gb``, or :data:`SHARE` of the device's free memory."""
    given = hcfg.get("memory_gb")
    return int(float(given) * 2**30) if given is not None else int(SHARE * free_memory(device))


def host_budget(device) -> int | None:
    """Bytes of the host's memory a GPU run's kept vectors may take (:data:`SHARE` of what it has free); None on the
    CPU, whose memory is the device's."""
    return int(SHARE * free_memory("cpu")) if torch.device(device).type == "cuda" else None


def _bytes(hcfg, p: int, dtype, group: int, store, steps: int, max_iter: int, slq: bool) -> tuple[int, ...]:
    """(kept, work) bytes of Lanczos's phase for the top eigenpairs, then of SLQ's (0, 0 without SLQ)."""
    k = max(int(hcfg.topk_vectors), int(hcfg.k), int(hcfg.topk))
    item, kept = dtype.itemsize, store.itemsize
    ritz = p * k * (8 + item)
    probes = int(hcfg.probes)
    top = (max_iter + 1) * p * kept  # Lanczos's rows at their most (its blocks are never copied)
    if not slq:  # the Hutchinson probes of the trace, deflated by Lanczos's rows while they are kept
        return top, ritz + probes * p * item, 0, 0
    rows = steps if hcfg.reorth == "full" else 2
    return top, ritz, rows * group * p * kept, ritz + probes * p * item + 4 * group * p * item


def need(hcfg, p: int, dtype: torch.dtype, group: int, store: torch.dtype, steps: int, max_iter: int,
         slq: bool = True, host: bool = False) -> int:  # fmt: skip
    """Bytes of one checkpoint's Lanczos vectors on the device: the larger of Lanczos's for the top eigenpairs
    (and their Ritz vectors, in float64; for lanczos alone, with the trace's probes, deflated by the kept rows)
    and SLQ's (its probes, each group's kept vectors, the deflated eigenvectors and a few vectors of work per
    probe). ``host``: the kept vectors in the host's memory (:func:`host_need`), a chunk of them at a time on the
    device."""
    kept_top, work_top, kept_slq, work_slq = _bytes(hcfg, p, dtype, group, store, steps, max_iter, slq)
    if host:
        from .iterative import CHUNK

        return max(work_top, work_slq) + CHUNK * max(store.itemsize, dtype.itemsize)
    return max(kept_top + work_top, kept_slq + work_slq)


def host_need(hcfg, p: int, dtype: torch.dtype, group: int, store: torch.dtype, steps: int, max_iter: int,
              slq: bool = True) -> int:  # fmt: skip
    """Bytes of the host's memory the kept vectors take in a plan that keeps them there."""
    kept_top, _, kept_slq, _ = _bytes(hcfg, p, dtype, group, store, steps, max_iter, slq)
    return max(kept_top, kept_slq)


def plan(
    hcfg, p: int, dtype: torch.dtype, limit: int, *, slq: bool = True, host_limit: int | None = None
) -> Plan | None:
    """The first of the module docstring's plans whose :func:`need` fits in ``limit`` bytes (and, for those that
    keep the vectors in the host's memory, :func:`host_need` in ``host_limit``: given for a GPU run); None if none
    does. ``slq``: SLQ runs after Lanczos (hessian=slq); else Lanczos alone."""
    probes, steps, max_iter = int(hcfg.probes), min(int(hcfg.steps), p), min(int(hcfg.max_iter), p)
    narrow = [dtype] if dtype == torch.float32 else [dtype, torch.float32]
    places = [False] if host_limit is None else [False, True]

    def fits(group: int, store, s: int, it: int, host: bool) -> Plan | None:
        bytes_ = need(hcfg, p, dtype, group, store, s, it, slq, host)
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


def checkpoint_plan(hcfg, p: int, dtype: torch.dtype, device, *, slq: bool = True) -> Plan:
    """The plan of a checkpoint on ``device``, logged once where it is not the configured one.

    Raises:
        UsageError: not even the smallest plan fits (:func:`sane_cli.methods.check_memory` refuses such a run
            before it starts, but the device's free memory may have shrunk since).
    """
    from .errors import UsageError

    limit = budget(hcfg, device)
    chosen = plan(hcfg, p, dtype, limit, slq=slq, host_limit=host_budget(device))
    if chosen is None:
        raise UsageError(refusal(hcfg, p, dtype, limit, slq=slq))
    if chosen.changes:
        line = f"hessian: the Lanczos vectors of {p:,} parameters within memory: {chosen.describe()}"
        if line not in _said:
            _said.add(line)
            log.info(line)
    return chosen


def refusal(hcfg, p: int, dtype: torch.dtype, limit: int, *, slq: bool = True) -> str:
    """The one line that refuses a run whose Lanczos vectors fit no plan."""
    what = f"SLQ's {hcfg.probes} probes and the Lanczos vectors" if slq else "Lanczos's vectors"
    given = hcfg.get("memory_gb")
    where = f"hessian.memory_gb={given}" if given is not None else f"{SHARE:.0%} of the free memory, {_gib(limit)}"
    return (f"hessian.method={'slq' if slq else 'lanczos'} needs at least {_gib(least(hcfg, p, dtype, slq=slq))} "
            f"for {what} of {p:,} parameters ({MIN_STEPS} steps, one probe at a time, kept in float32); the budget "
            f"is {where}: raise hessian.memory_gb (or free memory), or lower hessian.probes")  # fmt: skip


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
