"""The launcher's shutdown signals: one stop delivered twice is one stop; a later one forces the exit."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from serve_app.launch import SAME_STOP_WINDOW_S, ForcedExit, ShutdownSignals
from tests.support import ManualClock


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """A forced exit resets the process's SIGTERM/SIGINT handlers; put the test runner's back."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_the_same_stop_delivered_twice_is_one_stop() -> None:
    clock = ManualClock(50)
    signals = ShutdownSignals(clock=clock)
    signals._handle(signal.SIGTERM, None)
    clock.now += 0.01  # make forwards the group's SIGTERM to its child a moment later
    signals._handle(signal.SIGTERM, None)
    assert signals.requested.is_set() and signals.first == signal.SIGTERM


def test_a_later_signal_forces_the_exit_with_its_number(restored_signals: None) -> None:
    clock = ManualClock(50)
    signals = ShutdownSignals(clock=clock)
    signals._handle(signal.SIGINT, None)
    clock.now += SAME_STOP_WINDOW_S + 0.5
    with pytest.raises(ForcedExit) as raised:
        signals._handle(signal.SIGTERM, None)
    assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a third one kills outright


def test_while_the_drain_waits_a_later_signal_is_raised_between_polls_not_inside_them(restored_signals: None) -> None:
    clock = ManualClock(50)
    signals = ShutdownSignals(clock=clock)
    signals._handle(signal.SIGTERM, None)
    clock.now += SAME_STOP_WINDOW_S + 0.5
    with pytest.raises(ForcedExit) as raised, signals.deferring():
        signals._handle(signal.SIGINT, None)  # arrives in the middle of a poll: only recorded
        assert signals.forced == signal.SIGINT
        signals.check()  # the next poll raises it
    assert raised.value.signum == signal.SIGINT
