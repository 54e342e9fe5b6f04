"""A circuit breaker for the ledger's HTTP API.

Hand-written rather than a library: the well-known Python breakers (pybreaker, aiobreaker,
purgatory) either wrap synchronous calls, are no longer maintained, or bring their own
storage and listeners; what is needed here is forty lines with an injected clock, so the
state machine is unit-tested without sleeping. State is per process: each replica learns on
its own that the ledger is down, which costs at most ``failure_threshold`` failed attempts.

    closed --(failure_threshold consecutive failures)--> open
    open --(reset_after_s elapsed)--> half_open: one trial call is let through
    half_open --(trial succeeds)--> closed;  --(trial fails)--> open again
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError("failure_threshold >= 1 and reset_after_s > 0 are required")
        self._threshold = failure_threshold
        self._reset_after = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        # When the half-open trial was let through; a trial whose caller never reports back
        # (cancelled) must not hold the breaker half-open forever.
        self._trial_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._reset_after:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._trial_at is not None and now - self._trial_at < self._reset_after:
            return False
        self._trial_at = now
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_at = None

    def record_failure(self) -> None:
        if self.state == "half_open":
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._trial_at = None
        self._failures = 0
