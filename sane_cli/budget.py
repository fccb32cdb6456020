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
4. fewer steps (down to :data:`MIN_STEPS`): a quadrature of lower degree, whose bias bound (reported, as ever)
   is then wider; Lanczos's top eigenpairs get fewer iterations (its ``converged`` says whether they sufficed).

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

    def describe(self) -> str:
        return f"{', '.join(self.changes)} ({_gib(self.need)} of hessian.memory_gb's {_gib(self.budget)})"


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


def need(hcfg, p: int, dtype: torch.dtype, group: int, store: torch.dtype, steps: int, max_iter: int,
         slq: bool = True) -> int:  # fmt: skip
    """Bytes of one checkpoint's Lanczos vectors: the larger of Lanczos's for the top eigenpairs (and their Ritz
    vectors, in float64; for lanczos alone, with the trace's probes, deflated by the kept rows) and SLQ's (its
    probes, each group's kept vectors, the deflated eigenvectors and a few vectors of work per probe)."""
    k = max(int(hcfg.topk_vectors), int(hcfg.k), int(hcfg.topk))
    item, kept = dtype.itemsize, store.itemsize
    ritz = p * k * (8 + item)
    top = (max_iter + 1) * p * kept + ritz  # Lanczos's rows at their most (its blocks are never copied)
    probes = int(hcfg.probes)
    if not slq:  # the Hutchinson probes of the trace, deflated by Lanczos's rows while they are kept
        return top + probes * p * item
    rows = steps if hcfg.reorth == "full" else 2
    return max(top, ritz + probes * p * item + rows * group * p * kept + 4 * group * p * item)


def plan(hcfg, p: int, dtype: torch.dtype, limit: int, *, slq: bool = True) -> Plan | None:
    """The first of the module docstring's plans whose :func:`need` fits in ``limit`` bytes; None if none does.
    ``slq``: SLQ runs after Lanczos (hessian=slq); else Lanczos alone."""
    probes, steps, max_iter = int(hcfg.probes), min(int(hcfg.steps), p), min(int(hcfg.max_iter), p)
    narrow = [dtype] if dtype == torch.float32 else [dtype, torch.float32]
    for store in narrow:
        for group in sorted({probes, *(g for g in (8, 4, 2, 1) if g < probes)}, reverse=True) if slq else [probes]:
            bytes_ = need(hcfg, p, dtype, group, store, steps, max_iter, slq)
            if bytes_ <= limit:
                changes = []
                if group < probes:
                    changes.append(f"{group} of the {probes} probes at a time")
                if store != dtype:
                    changes.append("the Lanczos vectors kept in float32")
                return Plan(group, store, steps, max_iter, bytes_, limit, tuple(changes))
    store = torch.float32
    for fewer in range(min(steps, max_iter), MIN_STEPS - 1, -10):
        s, it = min(steps, fewer), min(max_iter, fewer)
        bytes_ = need(hcfg, p, dtype, 1, store, s, it, slq)
        if bytes_ <= limit:
            changes = ["1 probe at a time" if slq and probes > 1 else "", "the Lanczos vectors kept in float32"
                       if store != dtype else "", f"{s} SLQ steps of {steps}" if slq and s < steps else "",
                       f"at most {it} Lanczos iterations of {max_iter}" if it < max_iter else ""]  # fmt: skip
            return Plan(1, store, s, it, bytes_, limit, tuple(c for c in changes if c))
    return None


def least(hcfg, p: int, dtype: torch.dtype, *, slq: bool = True) -> int:
    """Bytes of the smallest plan: one probe at a time, float32 vectors, :data:`MIN_STEPS` steps."""
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
    chosen = plan(hcfg, p, dtype, limit, slq=slq)
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
