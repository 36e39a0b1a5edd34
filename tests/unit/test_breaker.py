"""The engine circuit breaker, driven by a fake clock: strikes, opening, probes, backoff, staleness."""

from __future__ import annotations

import pytest

from serve_app.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tests.support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(clock: ManualClock, changes: list[tuple[str, str]] | None = None) -> CircuitBreaker:
    def listener(old: BreakerState, new: BreakerState) -> None:
        if changes is not None:
            changes.append((old.value, new.value))

    return CircuitBreaker(BreakerConfig(max_strikes=3, cooldown_s=1.0, max_cooldown_s=4.0), clock, listener)


def test_opens_after_three_consecutive_strikes(clock: ManualClock) -> None:
    breaker = make(clock)
    assert breaker.record_strike("a") is False
    assert breaker.record_strike("b") is False
    assert breaker.allows_traffic()
    assert breaker.record_strike("c") is True
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows_traffic()
    assert breaker.last_error == "c"
    assert breaker.cooldown_left == pytest.approx(1.0)


def test_success_resets_strikes_so_only_consecutive_ones_count(clock: ManualClock) -> None:
    breaker = make(clock)
    breaker.record_strike("a")
    breaker.record_strike("b")
    breaker.record_success()
    breaker.record_strike("c")
    breaker.record_strike("d")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.strikes == 2


def test_probe_only_after_cooldown_and_only_once(clock: ManualClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_strike("x")
    assert not breaker.probe_ready()
    assert breaker.begin_probe() is False
    clock.now += 1.0
    assert breaker.probe_ready()
    assert breaker.begin_probe() is True
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allows_traffic()
    assert breaker.begin_probe() is False  # one probe at a time


def test_probe_success_closes(clock: ManualClock) -> None:
    changes: list[tuple[str, str]] = []
    breaker = make(clock, changes)
    for _ in range(3):
        breaker.record_strike("x")
    clock.now += 1.0
    breaker.begin_probe()
    breaker.end_probe(True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.strikes == 0
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probes_double_the_cooldown_up_to_the_cap(clock: ManualClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_strike("x")
    cooldowns = [breaker.current_cooldown]
    for _ in range(4):
        clock.now += breaker.current_cooldown
        assert breaker.begin_probe()
        breaker.end_probe(False, "still down")
        assert breaker.state is BreakerState.OPEN
        cooldowns.append(breaker.current_cooldown)
    assert cooldowns == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert breaker.failed_probes == 4
    assert breaker.last_error == "still down"


def test_flapping_engine_backs_off_until_real_traffic_succeeds(clock: ManualClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_strike("x")
    clock.now += 1.0
    breaker.begin_probe()
    breaker.end_probe(True)  # the short probe passes...
    for _ in range(3):
        breaker.record_strike("y")  # ...but real sentences fail again
    assert breaker.current_cooldown == 2.0
    clock.now += 2.0
    breaker.begin_probe()
    breaker.end_probe(True)
    breaker.record_success()  # real traffic works: backoff resets
    for _ in range(3):
        breaker.record_strike("z")
    assert breaker.current_cooldown == 1.0


def test_stale_strikes_from_requests_started_before_opening_do_not_count(clock: ManualClock) -> None:
    breaker = make(clock)
    started = breaker.now()
    clock.now += 0.1
    for _ in range(3):
        breaker.record_strike("x", breaker.now())
    clock.now += 1.0
    breaker.begin_probe()
    # A request that started before the breaker opened fails while the probe runs: not a verdict.
    assert breaker.record_strike("late", started) is False
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.last_error == "late"
    breaker.end_probe(True)
    assert breaker.state is BreakerState.CLOSED


def test_stale_success_does_not_close_an_open_breaker(clock: ManualClock) -> None:
    breaker = make(clock)
    started = breaker.now()
    clock.now += 0.1
    for _ in range(3):
        breaker.record_strike("x")
    breaker.record_success(started)
    assert breaker.state is BreakerState.OPEN
    breaker.record_success(breaker.now())  # a fresh success (last-resort traffic) is evidence
    assert breaker.state is BreakerState.CLOSED


def test_strikes_while_open_do_not_extend_the_cooldown(clock: ManualClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_strike("x")
    clock.now += 0.5
    assert breaker.record_strike("again") is False
    assert breaker.cooldown_left == pytest.approx(0.5)


def test_probe_due_one_shot_and_strike_in_half_open_reopens(clock: ManualClock) -> None:
    """The database guard's protocol: probe_due() then real traffic decides."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record_strike("x")
    clock.now += 1.0
    assert breaker.probe_due() is True
    assert breaker.probe_due() is False
    assert breaker.record_strike("probe failed") is True
    assert breaker.state is BreakerState.OPEN
    assert breaker.current_cooldown == 2.0


def test_force_open_and_snapshot(clock: ManualClock) -> None:
    breaker = make(clock)
    breaker.force_open("not deployed")
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["last_error"] == "not deployed"
    assert snap["strikes"] == 0
    assert snap["cooldown_left_s"] == pytest.approx(1.0)
    assert {"cooldown_s", "times_opened", "probes", "failed_probes", "total_strikes"} <= snap.keys()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(max_strikes=0)
    with pytest.raises(ValueError):
        BreakerConfig(cooldown_s=5.0, max_cooldown_s=1.0)
