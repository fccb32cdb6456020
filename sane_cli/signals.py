"""Stops by signal at points a run can be resumed from: SIGTERM (what schedulers and `timeout` send), SIGINT
(Ctrl-C) and SIGHUP (the terminal or ssh connection gone) raise :class:`Interrupted` in the training loop, at once
while nothing of the training state changes, and at the end of a step or a file write otherwise
(:meth:`Signals.hold`)."""

from __future__ import annotations

import contextlib
import signal
import threading

# the signals that stop a run where it can be resumed from; one that the shell told the process to ignore (SIGINT
# of a job started with `&`, SIGHUP under nohup) stays ignored
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_stopping: int | None = None  # the signal of the last run's stop in this process, None if it was not stopped


def forget_stop() -> None:
    """A new run begins in this process: no stop under way."""
    global _stopping
    _stopping = None


def stopping() -> int | None:
    """The signal that stopped the last run :class:`Signals` watched in this process (its stop may still be being
    recorded), or None."""
    return _stopping


class Interrupted(KeyboardInterrupt):
    """A stop by signal (SIGTERM, what schedulers and `timeout` send; SIGINT, Ctrl-C), raised in the training
    loop so that the run records where it stopped. ``signum`` is the signal, ``step`` the step it stopped at
    (set by :func:`train`)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, None


class Signals:
    """Stops by SIGTERM, SIGINT and SIGHUP at points from which the run can be resumed.

    While the loop measures curvature, nothing of the training state changes, so a signal raises
    :class:`Interrupted` at once and the run resumes at the top of that step. While an optimiser step changes
    the state or a file is written (``hold``), a signal is kept and raised when that is done.
    Installed in the main thread only (where Python delivers signals); a signal that the shell told this
    process to ignore stays ignored.
    """

    def __init__(self):
        self.pending: int | None = None
        self.received: int | None = None  # the last signal, also when torch re-raised it as another error
        self.holding = 0  # depth of nested hold() blocks

    def _handler(self, signum, _frame):
        global _stopping
        first, self.received = self.received is None, signum
        _stopping = signum
        if self.holding or not first:  # a stop under way is not raised again: it would cut short its saving
            self.pending = signum
        else:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)

    @contextlib.contextmanager
    def hold(self):
        """Signals wait while the block runs (a step, a file being written) and are raised when the outermost
        such block ends."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding:
            self.check()

    @contextlib.contextmanager
    def shielded(self):
        """Signals wait while the block runs (a stopped or ended run's record being written) and are not raised
        at its end either: they stay in ``pending`` for the caller."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1

    @contextlib.contextmanager
    def installed(self):
        global _stopping
        _stopping = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
