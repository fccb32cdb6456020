"""When curvature is taken: the scheduled checkpoints, the loss-spike detector, and the checkpoints just before
and after a spike.

    scheduled   step 0, every ``hessian.every`` steps, and the last step
    spike       a step whose training loss exceeds (1 + threshold) x the lowest loss of the current basin,
                after the loss has fallen within that basin (a rise straight from the basin's start is
                part of the previous spike, not a new one)
    pre_spike   the state just before a spike's step (its parameters are kept in memory a step at a time)
    post_spike  ``hessian.spike_after`` steps after a spike, once the loss has had time to settle

The same :class:`SpikeDetector` runs inside ``sane-run`` (through :class:`Schedule`) and in ``sane-report``
over the logged per-step loss (``sane_cli.basins``), so both find the same spikes. This module imports
neither torch nor pandas.
"""

from __future__ import annotations

import math
from typing import Any


def checkpoint_steps(every: int, total: int, at_start: bool = True) -> list[int]:
    """Steps with a scheduled curvature checkpoint: 0 (unless not ``at_start``), every, 2*every, ... and always
    the last step.

    >>> checkpoint_steps(300, 1000)
    [0, 300, 600, 900, 1000]
    >>> checkpoint_steps(300, 1000, at_start=False)
    [300, 600, 900, 1000]
    """
    return sorted(set(range(0 if at_start else every, total + 1, every)) | {total})


class SpikeDetector:
    """Online spike detection: feed the training loss of each step in order; ``update`` says whether
    that step starts a spike.

    >>> d = SpikeDetector(threshold=0.5)
    >>> [d.update(x) for x in [2.0, 1.0, 0.8, 1.5, 3.0, 1.0, 0.5, 0.4, 0.9]]
    [False, False, False, True, False, False, False, False, True]
    """

    def __init__(self, threshold: float = 0.5):
        if threshold <= 0:
            raise ValueError(f"spike threshold {threshold} must be > 0")
        self.threshold = threshold
        self.start: float | None = None  # loss at the start of the current basin
        self.low = math.inf  # lowest loss of the current basin
        self.rising = False  # inside a spike: the loss has not started to fall again
        self.last = math.inf

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if self.rising:
            if loss < self.last:  # past the peak: a new basin starts here
                self.rising, self.start, self.low = False, self.last, loss
            self.last = loss
            return False
        if self.start is None:
            self.start = loss
        spike = self.low < self.start and loss > (1.0 + self.threshold) * self.low
        if spike:
            self.rising = True
        else:
            self.low = min(self.low, loss)
        self.last = loss
        return spike


def detect_spikes(steps, losses, threshold: float = 0.5) -> list[int]:
    """The steps at which spikes start, from a training-loss curve in step order.

    >>> detect_spikes([0, 1, 2, 3], [2.0, 1.0, 1.8, 1.0])
    [2]
    """
    detector = SpikeDetector(threshold)
    return [int(s) for s, x in zip(steps, losses, strict=True) if detector.update(float(x))]


class Schedule:
    """The checkpoints of one run: which step takes which kind, and the spikes that add checkpoints.

    A step's top asks :meth:`due` (``scheduled``, ``post_spike`` or None) and :meth:`take_pre_spike` (a state
    kept from before a spike found by the previous step's loss); the step reports its batch loss to
    :meth:`observe`. With ``on_spike`` (full-batch runs), each of the first ``spike_max`` spikes after step 0
    plans a pre-spike checkpoint of the parameters before its step (unless that step was measured anyway) and a
    post-spike one ``spike_after`` steps on (within the run). :meth:`snapshot` and :meth:`restore` carry it
    through checkpoint.pt.

    >>> s = Schedule(total=20, every=10, on_spike=True, spike_threshold=0.5, spike_after=3, spike_max=1)
    >>> [s.due(t) for t in (0, 5, 10)]
    ['scheduled', None, 'scheduled']
    >>> for step, loss in enumerate([2.0, 1.0, 0.5, 2.0]):
    ...     s.observe(step, loss, kept=lambda: "parameters before step 3")
    >>> s.take_pre_spike(), s.due(6)
    ((2, 'parameters before step 3'), 'post_spike')
    """

    def __init__(self, total: int, every: int, *, on_spike: bool, spike_threshold: float, spike_after: int,
                 spike_max: int, at_start: bool = True):  # fmt: skip
        self.total = total
        self.scheduled = set(checkpoint_steps(every, total, at_start))
        self.detector = SpikeDetector(spike_threshold)
        self.on_spike = on_spike and spike_max > 0
        self.spike_after, self.spike_max = spike_after, spike_max
        self.spikes = 0  # spikes given checkpoints (at most spike_max)
        self.measured: set[int] = set()  # steps with a curvature checkpoint
        self.post_spike_at: set[int] = set()  # steps of post-spike checkpoints still to take
        self.pre_spike: tuple[int, Any] | None = None  # a pre-spike checkpoint to take: step, kept state

    def due(self, step: int) -> str | None:
        """The kind of checkpoint taken at the top of ``step``, if any."""
        if step in self.scheduled:
            return "scheduled"
        if step in self.post_spike_at and step not in self.measured:
            return "post_spike"
        return None

    def observe(self, step: int, loss: float, kept) -> None:
        """The loss of ``step``'s batch, before its update; ``kept()`` returns (a copy of) the state before
        ``step``, called only when a spike needs it."""
        if self.detector.update(loss) and self.on_spike and self.spikes < self.spike_max and step > 0:
            self.spikes += 1
            if step - 1 not in self.measured:  # measured at the top of the next step
                self.pre_spike = (step - 1, kept())
            if step + self.spike_after <= self.total:
                self.post_spike_at.add(step + self.spike_after)

    def take_pre_spike(self) -> tuple[int, Any] | None:
        """The pre-spike checkpoint to take now (step, kept state), once; None when there is none."""
        pre, self.pre_spike = self.pre_spike, None
        return pre

    def snapshot(self) -> dict[str, Any]:
        """The schedule's state as plain values (the kept state shared, never changed in place)."""
        return {
            "spikes": self.spikes, "measured": sorted(self.measured), "post_spike_at": sorted(self.post_spike_at),
            "pre_spike_step": None if self.pre_spike is None else self.pre_spike[0],
            "pre_spike_parameters": None if self.pre_spike is None else self.pre_spike[1],
            "detector": dict(vars(self.detector)),
        }  # fmt: skip

    def restore(self, saved: dict[str, Any]) -> None:
        """Back to a :meth:`snapshot` (as checkpoint.pt keeps it)."""
        self.spikes = int(saved["spikes"])
        self.measured, self.post_spike_at = set(saved["measured"]), set(saved["post_spike_at"])
        step = saved["pre_spike_step"]
        self.pre_spike = None if step is None else (int(step), saved["pre_spike_parameters"])
        vars(self.detector).update(saved["detector"])
