"""Tests of mnemosyne.providers.breaker: every transition, on a clock the test moves."""

import pytest

from mnemosyne.providers.breaker import (
    HALF_OPEN_RETRY_AFTER_S,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, open_s: float = 60.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failure_threshold=threshold, open_s=open_s, clock=clock), clock


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure()


def open_breaker() -> tuple[CircuitBreaker, Clock]:
    circuit, clock = breaker()
    fail(circuit, 3)
    assert circuit.state is BreakerState.OPEN
    return circuit, clock


def test_a_new_breaker_is_closed_and_lets_calls_through():
    circuit, _ = breaker()
    assert circuit.state is BreakerState.CLOSED
    circuit.before_call()
    circuit.record_success()
    assert circuit.failures == 0


def test_failures_below_the_threshold_keep_it_closed():
    circuit, _ = breaker()
    fail(circuit, 2)
    assert circuit.state is BreakerState.CLOSED
    assert circuit.failures == 2
    circuit.before_call()


def test_a_success_resets_the_count_of_consecutive_failures():
    circuit, _ = breaker()
    fail(circuit, 2)
    circuit.before_call()
    circuit.record_success()
    fail(circuit, 2)
    assert circuit.state is BreakerState.CLOSED


def test_the_third_consecutive_failure_opens_it_and_calls_fail_fast_with_the_time_left():
    circuit, clock = open_breaker()
    clock.now += 20
    with pytest.raises(CircuitOpen) as refused:
        circuit.before_call()
    assert refused.value.retry_after_s == pytest.approx(40)
    assert refused.value.failures == 3
    assert str(refused.value) == "circuit open after 3 consecutive provider failures"


def test_after_the_open_period_one_trial_goes_through_and_others_wait():
    circuit, clock = open_breaker()
    clock.now += 60
    assert circuit.state is BreakerState.HALF_OPEN
    circuit.before_call()
    with pytest.raises(CircuitOpen) as refused:
        circuit.before_call()
    assert refused.value.retry_after_s == HALF_OPEN_RETRY_AFTER_S


def test_a_successful_trial_closes_it():
    circuit, clock = open_breaker()
    clock.now += 61
    circuit.before_call()
    circuit.record_success()
    assert circuit.state is BreakerState.CLOSED
    assert circuit.failures == 0
    circuit.before_call()
    circuit.before_call()


def test_a_failed_trial_reopens_it_for_a_full_period():
    circuit, clock = open_breaker()
    clock.now += 61
    circuit.before_call()
    circuit.record_failure()
    assert circuit.state is BreakerState.OPEN
    clock.now += 59
    with pytest.raises(CircuitOpen) as refused:
        circuit.before_call()
    assert refused.value.retry_after_s == pytest.approx(1)
    clock.now += 1
    circuit.before_call()


def test_a_cancelled_trial_frees_the_slot_for_the_next_call():
    circuit, clock = open_breaker()
    clock.now += 60
    circuit.before_call()
    circuit.release()
    assert circuit.state is BreakerState.HALF_OPEN
    circuit.before_call()


def test_a_late_failure_while_open_does_not_extend_the_open_period():
    circuit, clock = breaker()
    for _ in range(4):
        circuit.before_call()
    for _ in range(4):
        circuit.record_failure()
        clock.now += 10
    # Opened by the third failure, 30 s before now; the fourth must not restart the period.
    with pytest.raises(CircuitOpen) as refused:
        circuit.before_call()
    assert refused.value.retry_after_s == pytest.approx(40)


def test_a_threshold_of_one_opens_on_the_first_failure():
    circuit, _ = breaker(threshold=1, open_s=0.5)
    fail(circuit, 1)
    with pytest.raises(CircuitOpen):
        circuit.before_call()


@pytest.mark.parametrize(("threshold", "open_s"), [(0, 60), (3, 0), (3, -1), (3, float("nan"))])
def test_bad_settings_are_refused(threshold, open_s):
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, open_s=open_s)
