"""The repayment gate: no contact leaves while the notifier's view of repayments lags.

A repayment stops contact only once the notifier has consumed it (its handler cancels the
loan's waiting commands, and ``decide`` re-checks repayments before each send). While the
repayment lane is behind (restarted, rebalancing, its partitions on a replica that died
and is not yet declared dead), a dispatch pass would decide on a view of repayments that
misses some, and contact borrowers who have paid. So the dispatcher holds its passes until
that view is known to be current: due rows stay ``pending`` (nothing failed, nothing is
decided), and they go out or are cancelled once the gate opens.

What "current" means, and why it is checked for the whole group:

- A command for loan L may be dispatched by any notifier replica (rows are claimed with
  ``SKIP LOCKED``), while L's repayments are consumed by whichever replica owns L's
  partition of the repayments topic. "My assigned partitions are caught up" would say
  nothing about L's. The gate therefore looks at EVERY partition of the repayments topic,
  and at the notifier group's COMMITTED offsets, which any replica can read.
- The consumer loop commits a batch's offsets only after its database transaction has
  committed; so a committed offset ``o`` means every repayment before ``o`` is in the
  shared database, where every replica's ``decide`` reads it.
- Under steady traffic the committed offsets always trail the log end a little, so the gate
  does not ask for "committed == end" at one instant. It notes the log end offsets at time
  ``t`` (a mark), and once the committed offsets have reached that mark on every partition
  it knows: every repayment published before ``t`` is applied. The view is current as of
  the newest such ``t``; a pass may send while that is at most ``max_lag`` ago. The end
  offsets are read before the committed ones, so a quiet topic confirms each look's own
  mark at once.
- Nothing assigned, nobody consuming (a rebalance, the whole lane down): the committed
  offsets stop while new repayments move the log end, and the gate closes. No new
  repayment meanwhile: nothing was missed, and it stays open. A partition the group never
  committed on counts from its log start (so does one whose records retention removed):
  those records need no consuming.
- The broker unreachable: no look succeeds, the last good one ages past ``max_lag``, and
  the gate closes.

What remains (the documented race window, docs/reliability.md "Documented limits"): a repayment
published less than ``max_lag`` (plus a look's interval) before a pass, or during the
pass's hand-over to the channel, can still miss it. The chaos run allows 5 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Gauge

from collections_kit.worker import PollingWorker, RunsOnAPollingWorker

log = logging.getLogger(__name__)

LOOK_TIMEOUT_S = 10.0

HELD = Gauge(
    "notifier_dispatch_held", "1 while contact dispatch is held because the view of repayments lags"
)
BEHIND_SECONDS = Gauge(
    "notifier_repayments_behind_seconds",
    "How old the newest moment is up to which every repayment is known applied",
)
BEHIND_RECORDS = Gauge(
    "notifier_repayments_behind_records",
    "Repayment records not yet committed by the notifier group, over all partitions",
)


class RepaymentLog(Protocol):
    """The repayments topic as the gate sees it (all partitions, the notifier's group)."""

    async def ends(self) -> dict[int, int]:
        """The log end offset of every partition of the repayments topic."""
        ...

    async def consumed(self, ends: Mapping[int, int]) -> dict[int, int]:
        """Where the notifier's group stands on each of ``ends``' partitions: its committed
        offset, raised to the log start (a record gone from the log needs no consuming)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Mark:
    at: float
    ends: Mapping[int, int]


class RepaymentGate(RunsOnAPollingWorker):
    """Open while every repayment published up to ``max_lag_s`` ago is applied."""

    def __init__(
        self,
        log: RepaymentLog,
        *,
        max_lag_s: float,
        look_every_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._max_lag_s = max_lag_s
        self._now = monotonic
        # Marks not yet reached by the committed offsets, oldest first.
        self._marks: list[_Mark] = []
        self._current_as_of: float | None = None
        self._behind_records = 0
        self._failure: str | None = None
        self._looked = asyncio.Event()
        self._was_open = True  # logs the first closing
        # A look that fails is no failed round: the gate ages and closes (see _look_once).
        self._worker = PollingWorker(
            "repayment gate", self._look_once, interval_s=look_every_s, on_stop=self._log.close
        )

    def is_open(self) -> bool:
        return (
            self._current_as_of is not None and self._now() - self._current_as_of <= self._max_lag_s
        )

    def held(self) -> str | None:
        """Why dispatch is held (None: it is not); safe to log and to show on /readyz."""
        if self.is_open():
            return None
        if self._failure is not None:
            return f"contact dispatch held: repayments topic unreadable ({self._failure})"
        if self._current_as_of is None:
            return (
                "contact dispatch held: repayments not yet known applied "
                f"({self._behind_records} records behind)"
            )
        return (
            "contact dispatch held: repayments known applied only up to "
            f"{self._now() - self._current_as_of:.1f}s ago "
            f"({self._behind_records} records behind)"
        )

    async def look(self) -> None:
        """One look at the topic: a new mark, and whether the group has reached any."""
        at = self._now()
        ends = await self._log.ends()
        if not ends:
            raise LookupError("no partitions")
        self._marks.append(_Mark(at, ends))
        consumed = await self._log.consumed(ends)  # after the ends: see the docstring
        for n in range(len(self._marks) - 1, -1, -1):
            mark = self._marks[n]
            if all(consumed.get(p, 0) >= end for p, end in mark.ends.items()):
                self._current_as_of = mark.at
                del self._marks[: n + 1]
                break
        # A mark older than max_lag can no longer open the gate: forget it.
        self._marks = [m for m in self._marks if at - m.at <= self._max_lag_s]
        self._behind_records = sum(max(end - consumed.get(p, 0), 0) for p, end in ends.items())
        self._failure = None

    async def opened(self, stop: asyncio.Event, *, within: float) -> None:
        """Returns once the gate is open, ``stop`` is set, or after ``within`` seconds."""
        deadline = self._now() + within
        while not self.is_open() and not stop.is_set():
            left = deadline - self._now()
            if left <= 0:
                return
            waiters = [
                asyncio.ensure_future(self._looked.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _look_once(self) -> bool:
        try:
            # Bounded: a client waiting out its own retries must not stall the
            # loop's heartbeat (the gate just ages and closes meanwhile).
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                await self.look()
        except Exception as exc:  # the broker may be away: the gate ages, closes
            self._failure = type(exc).__name__
        self._observe()
        self._looked.set()
        self._looked = asyncio.Event()
        return False

    def _observe(self) -> None:
        is_open = self.is_open()
        HELD.set(0 if is_open else 1)
        BEHIND_RECORDS.set(self._behind_records)
        if self._current_as_of is not None:
            BEHIND_SECONDS.set(max(self._now() - self._current_as_of, 0.0))
        if is_open != self._was_open:
            if is_open:
                log.info("contact dispatch resumed: repayments are applied")
            else:
                log.warning("%s", self.held(), extra={"behind_records": self._behind_records})
            self._was_open = is_open
