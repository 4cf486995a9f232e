"""StopRequest: which signals stop a run gracefully, and which act at once."""

import os
import signal

import pytest

from resnets.train.stop import StopRequest


def test_repeated_sigterm_stays_graceful_and_a_second_ctrl_c_interrupts():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopRequest() as stop:
        # A scheduler (or a parent forwarding it) may send SIGTERM twice: the run still stops cleanly.
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C is noted (the run is stopping already)
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # the second one interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.5)  # a point where the interpreter runs the handler
    assert {s: signal.getsignal(s) for s in before} == before
