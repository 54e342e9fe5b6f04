"""Durable timers: each fires exactly once, at or after its due time.

A timer row is inserted in the same transaction as the decision that scheduled it. The
worker fires one timer per transaction, locking the case first and then the timer row
(``SKIP LOCKED``) in the same order every writer uses, so two replicas never fire a timer
twice and never deadlock. Firing marks the row in that transaction: a crash before commit
fires it again later, a crash after commit never. A timer made stale by a later transition
was already marked superseded, or finds a newer epoch and does nothing.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from collections_kit.clock import Clock
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from workflow.app.handlers import Workflow
from workflow.app.ports import StartUnitOfWork
from workflow.domain import messages as m
from workflow.metrics import TIMERS_OLDEST_OVERDUE, TIMERS_OVERDUE

log = logging.getLogger(__name__)


class TimerWorker(RunsOnAPollingWorker):
    def __init__(
        self,
        uow: StartUnitOfWork,
        clock: Clock,
        workflow: Workflow,
        *,
        batch: int = 200,
        poll_s: float = 1.0,
        money_seen_retention: timedelta = timedelta(days=3),
        idempotency_key_retention: timedelta = timedelta(days=30),
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._workflow = workflow
        self._batch = batch
        self._measured_at = 0.0
        self._money_seen_retention = money_seen_retention
        self._idempotency_key_retention = idempotency_key_retention
        self._pruned_at = 0.0
        # Polls at most poll_s apart: another replica or a REST call may add an earlier timer.
        self._worker = PollingWorker(
            "timer worker", self._fire_round, interval_s=poll_s, idle_for=self._next_due_in
        )

    async def _fire_round(self) -> bool:
        """Fire what is due; a full batch means more may be due already."""
        fired = await self.fire_due()
        await self._measure_overdue()
        await self.prune_expired()
        return fired >= self._batch

    async def _measure_overdue(self) -> None:
        """What is still past due after firing (at most once a second; the partial index on
        unfired timers keeps both reads cheap)."""
        if time.monotonic() - self._measured_at < 1.0:
            return
        self._measured_at = time.monotonic()
        now = self._clock.now()
        async with self._uow() as uow:
            count, oldest = await uow.timers.overdue(now)
        TIMERS_OVERDUE.set(count)
        TIMERS_OLDEST_OVERDUE.set(max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)

    async def prune_expired(self, *, every_s: float = 60.0) -> int:
        """Forget what is kept for a while only, once past its retention (a minute apart at
        most: rows expire by the hour): repayments of loans without a case, and the REST
        writes' idempotency keys with their answers."""
        if time.monotonic() - self._pruned_at < every_s:
            return 0
        self._pruned_at = time.monotonic()
        async with self._uow() as uow:
            now = self._clock.now()
            pruned = await uow.cases.prune_money_seen(now - self._money_seen_retention)
            pruned += await uow.idempotency_keys.prune(now - self._idempotency_key_retention)
            await uow.commit()
            return pruned

    async def _next_due_in(self) -> float | None:
        """Seconds until the earliest unfired timer is due (None: there is none)."""
        async with self._uow() as uow:
            due = await uow.timers.next_due()
        return None if due is None else (due - self._clock.now()).total_seconds()

    async def fire_due(self) -> int:
        now = self._clock.now()
        async with self._uow() as uow:
            due = await uow.timers.due(now, self._batch)
        fired = 0
        for timer_id, loan_id in due:
            fired += await self._fire(timer_id, loan_id)
        return fired

    async def _fire(self, timer_id: str, loan_id: str) -> int:
        async with self._uow(actor="timer") as uow:
            await uow.cases.get(loan_id, lock=True)  # case first, then the timer: one lock order
            timer = await uow.timers.lock_unfired(timer_id)
            if timer is None:
                return 0  # another replica fired it, or a transition superseded it
            await self._workflow.run(
                uow.tx,
                loan_id,
                m.TimerFired(
                    timer_id=timer.timer_id, kind=timer.kind, token=timer.token, due_at=timer.due_at
                ),
                f"timer:{timer.timer_id}",
                cases=uow.cases,
                tasks=uow.tasks,
            )
            await uow.timers.mark_fired(timer.timer_id, uow.now)
            await uow.commit()
            log.info(
                "timer fired",
                extra={
                    "timer_id": timer.timer_id,
                    "kind": timer.kind,
                    "loan_id": loan_id,
                    "late_s": (uow.now - timer.due_at) / timedelta(seconds=1),
                },
            )
            return 1
