"""The circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

import pytest

from ledger_sync.adapters.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)


def test_closed_lets_calls_through_and_a_success_resets_the_count(clock: Clock) -> None:
    b = breaker(clock)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    assert b.allow()


def test_consecutive_failures_open_it_and_it_fails_fast(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    clock.t += 9.9
    assert not b.allow()


def test_after_the_reset_time_one_trial_goes_through(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.t += 10
    assert b.state == "half_open"
    assert b.allow()
    assert not b.allow(), "only one trial at a time"


def test_a_successful_trial_closes_it(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.t += 10
    assert b.allow()
    b.record_success()
    assert b.state == "closed"
    assert b.allow()
    assert b.allow()


def test_a_failed_trial_opens_it_again_for_a_full_period(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.t += 10
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    clock.t += 9
    assert not b.allow()
    clock.t += 1
    assert b.allow()


def test_a_trial_that_never_reports_back_does_not_wedge_it(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.t += 10
    assert b.allow()  # the caller is cancelled and never records anything
    clock.t += 10
    assert b.allow()


def test_nonsense_thresholds_are_refused(clock: Clock) -> None:
    with pytest.raises(ValueError, match="failure_threshold >= 1"):
        CircuitBreaker(failure_threshold=0, reset_after_s=1, clock=clock)
    with pytest.raises(ValueError, match="reset_after_s > 0"):
        CircuitBreaker(failure_threshold=1, reset_after_s=0, clock=clock)
