"""The one polling loop every background worker of a service runs in.

A worker does its job in rounds: the outbox relay drains a batch, the workflow's timers fire
what is due, ledger-sync answers waiting balance checks and runs its reconciliation pass, the
notifier dispatches due contacts and looks at its repayments lane. Each of them builds a
:class:`PollingWorker` with a name, the round (a method of its own that returns whether more
work is waiting right now) and how long to idle between rounds (and, to be run by the
runtime, derives from :class:`RunsOnAPollingWorker`); the worker owns the rest:

- **Wake or interval.** After a round that left nothing waiting, the worker idles for the
  interval, or until ``idle_for`` says the next piece of work is due (a timer, a deferred
  contact), whichever is sooner: another replica or a REST call may add earlier work, so it
  never sleeps past the interval. :meth:`PollingWorker.wake` (a ``pg_notify`` at commit, a
  consumer's committed batch) ends the idling at once. The wake is cleared *before* a round,
  so one that arrives during the round is not lost: the next idle returns at once. A round
  that says more is waiting (a full batch) is followed by the next one without idling.
- **Never spin.** An idle computed as "due now" still waits :data:`MIN_IDLE_S`: work that is
  due but locked by another replica (``SKIP LOCKED``) must not make a replica busy-wait.
- **Backoff.** A round that raises is logged (never raised: a background loop that ends
  stops the process, see ``runtime.Runtime``) and retried after a pause that doubles from
  :data:`BACKOFF_FIRST_S` up to :data:`BACKOFF_CAP_S`, and starts over after a round that
  succeeds. One policy for every loop (their caps had drifted to 5 s in some, 10 s in
  others): the cap is the longest a loop stays away once its cause (a database failover, a
  broker restart) has passed. A wake does not cut a backoff short: under load the consumer
  wakes the dispatcher after every batch, and a failing round would be retried at that pace.
- **Heartbeat.** ``heartbeat`` is what ``runtime.Runtime.live`` reads: the worker beats when
  a round *succeeds* and while it idles (at least every :data:`BEAT_EVERY_S`, however long the
  interval: the reconciliation pass runs every fifteen minutes). It does not beat while a
  round runs, nor while it backs off: a round that hangs, or one that fails every time for
  ``STALL_AFTER_S``, fails liveness and the pod is restarted (a wedged producer or pool is
  cured by a restart, nothing else). A round that is long by design beats from inside with
  :meth:`PollingWorker.beat` as it makes progress (a reconciliation page, a loan answered).
- **Stop.** ``stop`` ends idling and backoff at once; a round in progress is finished, not
  cut off (``Runtime.stop`` waits for it, then cancels). ``on_stop`` runs after the loop
  ends, however it ends: the relay closes its listener, the repayment gate its Kafka client.
- **Time** is injected (:class:`Ticks`): the worker's tests run its waits on a fake, in no
  time at all. asyncio's own primitives only, no scheduling library: a loop this small is
  clearer written out once than configured in someone else's terms.

Not everything that loops is a poll: the Kafka consumer loop (``consumer.ConsumerLoop``) is
paced by the broker's fetch, not by an interval, and stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

# Backoff after a failed round: doubles from the first pause up to the cap (one policy for
# every loop; see the module docstring).
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0
# An idle worker beats at least this often: well within runtime.STALL_AFTER_S.
BEAT_EVERY_S = 5.0
# The shortest idle: never spin on work that is due but held by another replica.
MIN_IDLE_S = 0.02


def backoff_after(failures: int) -> float:
    """The pause after the ``failures``-th failed round in a row (1, 2, ...)."""
    pause: float = BACKOFF_FIRST_S * 2.0 ** max(failures - 1, 0)
    return min(pause, BACKOFF_CAP_S)


class Ticks(Protocol):
    """Time as the worker sees it: a monotonic clock, and a wait that ends early once any of
    ``events`` is set."""

    def monotonic(self) -> float: ...

    async def wait(self, seconds: float, *events: asyncio.Event) -> None: ...


class RealTicks:
    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, seconds: float, *events: asyncio.Event) -> None:
        if any(event.is_set() for event in events):
            return
        if not events:
            await asyncio.sleep(seconds)
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


class PollingWorker:
    """Runs ``round`` until ``stop`` is set: idles between rounds, backs off after a failed
    one, beats for liveness (see the module docstring)."""

    def __init__(
        self,
        name: str,
        round_: Callable[[], Awaitable[bool]],
        *,
        interval_s: float,
        idle_for: Callable[[], Awaitable[float | None]] | None = None,
        idle_first: bool = False,
        quote_errors: bool = True,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        ticks: Ticks | None = None,
    ) -> None:
        """``round_`` returns True when more work is waiting right now (the next round then
        follows at once). ``idle_for``, if given, says in how many seconds the next piece of
        work is due (None: nothing scheduled); it is asked after every round that returned
        False, and it may fail like a round. ``idle_first``: the first round comes one
        interval after the start (a scheduled pass), not at once. ``quote_errors=False``
        where an exception's text may quote contact details (statement parameters): then a
        failed round logs its type and frames only."""
        self.name = name
        self._round = round_
        self._interval_s = interval_s
        self._idle_for = idle_for
        self._idle_first = idle_first
        self._quote_errors = quote_errors
        self._on_stop = on_stop
        self._ticks: Ticks = ticks or RealTicks()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()  # replaced by run()'s: a round may wait on it too
        self.heartbeat = self._ticks.monotonic()

    @property
    def stopping(self) -> asyncio.Event:
        """The event the worker runs until: a round that waits on something else (the
        dispatcher on the repayment gate) waits on this too, so stopping is not delayed."""
        return self._stop

    def wake(self) -> None:
        """New work may be waiting: end the idle now, not at the interval."""
        self._wake.set()

    def beat(self) -> None:
        """Progress from inside a long round (liveness; see the module docstring)."""
        self.heartbeat = self._ticks.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        failures = 0
        try:
            if self._idle_first:
                await self._idle(self._interval_s)
            while not stop.is_set():
                self._wake.clear()
                try:
                    more = await self._round()
                    idle = 0.0 if more else await self._next_round_in()
                except Exception as exc:
                    failures += 1
                    pause = backoff_after(failures)
                    self._log_failure(exc, pause)
                    await self._ticks.wait(pause, stop)
                    continue
                failures = 0
                self.beat()
                if idle > 0:
                    await self._idle(idle)
        finally:
            if self._on_stop is not None:
                await self._on_stop()

    async def _next_round_in(self) -> float:
        due = None if self._idle_for is None else await self._idle_for()
        if due is None:
            return self._interval_s
        return min(max(due, MIN_IDLE_S), self._interval_s)

    async def _idle(self, seconds: float) -> None:
        """Up to ``seconds``, ended early by a wake or the stop; beating meanwhile."""
        until = self._ticks.monotonic() + seconds
        while not self._stop.is_set() and not self._wake.is_set():
            left = until - self._ticks.monotonic()
            if left <= 0:
                return
            await self._ticks.wait(min(left, BEAT_EVERY_S), self._stop, self._wake)
            self.beat()

    def _log_failure(self, exc: Exception, pause: float) -> None:
        if self._quote_errors:
            log.error(
                "%s failed; retrying in %.1fs",
                self.name,
                pause,
                exc_info=exc,
                extra={"worker": self.name},
            )
            return
        # Frames only: the exception's text can quote statement parameters, which include
        # addresses when the failing statement touched them.
        log.error(
            "%s failed; retrying in %.1fs",
            self.name,
            pause,
            extra={
                "worker": self.name,
                "error": type(exc).__name__,
                "trace": "".join(traceback.format_tb(exc.__traceback__)),
            },
        )


class RunsOnAPollingWorker:
    """For a class whose loop is the :class:`PollingWorker` it holds as ``_worker`` (the
    relay, the timers, the dispatcher...): what ``runtime.Worker`` asks of it, delegated
    to that worker, written once."""

    _worker: PollingWorker

    @property
    def heartbeat(self) -> float:
        return self._worker.heartbeat

    def wake(self) -> None:
        """New work may be waiting (a commit's ``pg_notify``, a consumer's committed
        batch): end the idle now, not at the interval."""
        self._worker.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._worker.run(stop)
