"""Stopping a run on request without losing an iteration.

SIGTERM (a job scheduler preempting the job, `kill`, torchrun shutting its workers down) and
SIGINT (Ctrl-C) no longer kill a run between two checkpoints: the signal is noted, the loop
finishes the step it is in, writes checkpoints/last.pt at that iteration and stops, so
`--resume` continues from exactly there. A second Ctrl-C is not caught: it interrupts at once.
SIGTERM stays caught until the run has stopped (schedulers may send it more than once, and a
parent process forwards it to its workers); SIGKILL is the way to stop a run at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from ..runtime import Runtime

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# With several processes the stop must happen at the same iteration in all of them, so they agree
# every this many iterations (one all-reduce of one number); a single process stops at the next step.
STOP_CHECK_EVERY = 10


class StopRequest:
    """Catches STOP_SIGNALS while a run trains (a context manager); `requested` says when to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        # Python delivers signals to the main thread only; a run trained in another thread keeps
        # the default behaviour.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signal = self.signal or signum
        if signum == signal.SIGINT and signum in self._previous:  # a second Ctrl-C acts as usual
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def requested(self, step: int, rt: Runtime) -> bool:
        """True at the step where every process stops (called by all processes at every step)."""
        if not rt.distributed:
            return self.signal is not None
        if step % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([self.signal or 0], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = int(flag.item())  # one host sync every STOP_CHECK_EVERY steps
        self.signal = self.signal or agreed or None  # another process may have been the one signalled
        return agreed != 0
