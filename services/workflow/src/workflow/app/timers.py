"""Durable timers: each fires exactly once, at or after its due time.

A timer row is inserted in the same transaction as the decision that scheduled it. The
worker fires one timer per transaction, locking the case first and then the timer row
(``SKIP LOCKED``) in the same order every writer uses, so two replicas never fire a timer
twice and never deadlock. Firing marks the row in that transaction: a crash before commit
fires it again later, a crash after commit never. A timer made stale by a later transition
was already marked superseded, or finds a newer epoch and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import Clock
from collections_kit.outbox import Tx, flush
from collections_kit.settings import ServiceSettings
from workflow.adapters.repository import CaseRepository
from workflow.adapters.tables import outbox, timers
from workflow.app.handlers import Workflow
from workflow.domain import messages as m
from workflow.metrics import TIMERS_OLDEST_OVERDUE, TIMERS_OVERDUE

log = logging.getLogger(__name__)


class TimerWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: ServiceSettings,
        clock: Clock,
        workflow: Workflow,
        *,
        batch: int = 200,
        poll_s: float = 1.0,
        money_seen_retention: timedelta = timedelta(days=3),
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._workflow = workflow
        self._batch = batch
        self._poll_s = poll_s
        self.heartbeat = time.monotonic()
        self._measured_at = 0.0
        self._money_seen_retention = money_seen_retention
        self._pruned_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                fired = await self.fire_due()
                self.heartbeat = time.monotonic()
                await self._measure_overdue()
                await self.prune_money_seen()
                backoff = 0.5
                if fired < self._batch:
                    await asyncio.sleep(await self._sleep_for())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer worker failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _measure_overdue(self) -> None:
        """What is still past due after firing (at most once a second; the partial index on
        unfired timers keeps both reads cheap)."""
        if time.monotonic() - self._measured_at < 1.0:
            return
        self._measured_at = time.monotonic()
        now = self._clock.now()
        overdue = (timers.c.fired_at.is_(None)) & (timers.c.due_at <= now)
        async with self._engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(
                    select(timers.c.timer_id).where(overdue).limit(100_000).subquery()
                )
            )
            oldest = await conn.scalar(select(func.min(timers.c.due_at)).where(overdue))
        TIMERS_OVERDUE.set(int(count or 0))
        TIMERS_OLDEST_OVERDUE.set(max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)

    async def prune_money_seen(self, *, every_s: float = 60.0) -> int:
        """Forget repayments of loans without a case once past their retention (a minute
        apart at most: rows expire by the hour)."""
        if time.monotonic() - self._pruned_at < every_s:
            return 0
        self._pruned_at = time.monotonic()
        async with self._engine.begin() as conn:
            return await CaseRepository(conn).prune_money_seen(
                self._clock.now() - self._money_seen_retention
            )

    async def _sleep_for(self) -> float:
        async with self._engine.connect() as conn:
            due = await CaseRepository(conn).next_timer_due()
        if due is None:
            return self._poll_s
        # Another replica or a REST call may add an earlier timer: never sleep long.
        return max(0.0, min((due - self._clock.now()).total_seconds(), self._poll_s))

    async def fire_due(self) -> int:
        now = self._clock.now()
        async with self._engine.connect() as conn:
            due = (
                await conn.execute(
                    select(timers.c.timer_id, timers.c.loan_id)
                    .where(timers.c.fired_at.is_(None), timers.c.due_at <= now)
                    .order_by(timers.c.due_at)
                    .limit(self._batch)
                )
            ).all()
        fired = 0
        for timer_id, loan_id in due:
            fired += await self._fire(timer_id, loan_id)
        return fired

    async def _fire(self, timer_id: str, loan_id: str) -> int:
        async with self._engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=self._clock.now(),
                source=self._settings.service_name,
                topic_prefix=self._settings.topic_prefix,
                actor="timer",
            )
            repo = CaseRepository(conn)
            await repo.get(loan_id, lock=True)  # case first, then the timer: one lock order
            row = (
                await conn.execute(
                    select(timers)
                    .where(timers.c.timer_id == timer_id, timers.c.fired_at.is_(None))
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if row is None:
                return 0  # another replica fired it, or a transition superseded it
            await self._workflow.run(
                tx,
                loan_id,
                m.TimerFired(
                    timer_id=row.timer_id, kind=row.kind, token=row.token, due_at=row.due_at
                ),
                f"timer:{row.timer_id}",
            )
            await repo.mark_fired(row.timer_id, tx.now)
            await flush(tx, outbox, self._settings.db_schema)
            log.info(
                "timer fired",
                extra={
                    "timer_id": row.timer_id,
                    "kind": row.kind,
                    "loan_id": loan_id,
                    "late_s": (tx.now - row.due_at) / timedelta(seconds=1),
                },
            )
            return 1
