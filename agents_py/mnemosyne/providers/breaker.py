"""A circuit breaker: stop calling a provider that keeps failing, and try it again later.

Pure and synchronous, with an injectable clock, so every transition is a unit test. The
provider asks `before_call()` before each call and reports the outcome with
`record_success()`, `record_failure()` or `release()`.

- **closed**: calls go through. `failure_threshold` consecutive failures open the breaker.
- **open**: calls fail fast with `CircuitOpen` (carrying the time left) for `open_s` seconds,
  so a worker whose provider is down answers at once instead of holding every request for the
  SDK's timeouts and retries.
- **half-open**: after the open period one trial call goes through (others still fail fast);
  its success closes the breaker, its failure opens it for another period.

Only failures that say the provider is unavailable count (5xx, overload, throttling,
connection errors, timeouts). A refusal of one request (a 4xx) proves the provider is up, so
the provider reports it as a success.
"""

import time
from collections.abc import Callable
from enum import Enum

DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_OPEN_S = 60.0
# What a call turned away during a half-open trial is told to wait: the trial should settle
# within about one request, and the breaker cannot know when.
HALF_OPEN_RETRY_AFTER_S = 1.0


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The breaker refused a call; `retry_after_s` is how long it will keep refusing."""

    def __init__(self, retry_after_s: float, failures: int) -> None:
        super().__init__(f"circuit open after {failures} consecutive provider failures")
        self.retry_after_s = retry_after_s
        self.failures = failures


class CircuitBreaker:
    """Counts consecutive failures of calls and refuses calls while too many have failed."""

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        open_s: float = DEFAULT_OPEN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if not open_s > 0:
            raise ValueError(f"open_s must be positive, got {open_s}")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose period is over reads as half-open."""
        if self._state is BreakerState.OPEN and self._remaining_s() <= 0:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return self._failures

    def before_call(self) -> None:
        """Lets a call through, or raises `CircuitOpen` if the breaker refuses it."""
        if self._state is BreakerState.OPEN:
            remaining = self._remaining_s()
            if remaining > 0:
                raise CircuitOpen(remaining, self._failures)
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            if self._trial_in_flight:
                raise CircuitOpen(HALF_OPEN_RETRY_AFTER_S, self._failures)
            self._trial_in_flight = True

    def record_success(self) -> None:
        """The call reached a working provider: close the breaker and forget past failures."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """The call found the provider unavailable; opens the breaker at the threshold, or at
        once after a failed half-open trial."""
        self._failures += 1
        if self._state is BreakerState.OPEN:
            # A call that started before the breaker opened; its failure is old news and must
            # not push the end of the open period further out.
            return
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without a verdict (it was cancelled): free the half-open trial slot
        so the next call may try, and count nothing."""
        self._trial_in_flight = False

    def _remaining_s(self) -> float:
        return self._opened_at + self.open_s - self._clock()
