"""Tasks of the work queues in PostgreSQL.

"Next" is safe under concurrency by three locks, the last of which is the database's own
rule: the borrower is claimed with a transaction-scoped advisory lock that is only *tried*
(two collectors never wait on each other for a borrower's other loans), each candidate row
is locked ``FOR UPDATE SKIP LOCKED`` as it is tried (two collectors never take the same
task), and the partial unique index on leased tasks per borrower (migration 0009) refuses a
second lease outright should the first two ever be bypassed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import case, exists, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import insert_rows, update_rows
from workflow.adapters.tables import tasks, timeline_rows
from workflow.app.ports import QueueCount, TaskStep
from workflow.domain.tasks import LIVE, Task, TaskKind, TaskStatus, Withdrawal

_LIVE = [s.value for s in LIVE]
# Each target is [case id, reason, kinds or null (every kind)].
_WITHDRAW = """
UPDATE tasks AS t SET status = 'withdrawn', outcome = w.reason, ended_at = $2
FROM (
    SELECT e->>0 AS case_id, e->>1 AS reason, e->2 AS kinds
    FROM jsonb_array_elements($1::text::jsonb) AS e
) AS w
WHERE t.case_id = w.case_id
  AND t.status = ANY($3::text[])
  AND (jsonb_typeof(w.kinds) = 'null' OR w.kinds ? t.kind)
RETURNING t.*
"""
_ONE_LEASE_PER_BORROWER = "ux_tasks_leased_borrower"


def task_from_row(row: Any) -> Task:
    return Task(
        task_id=row.task_id,
        case_id=row.case_id,
        loan_id=row.loan_id,
        borrower_id=row.borrower_id,
        kind=TaskKind(row.kind),
        queue=row.queue,
        priority=row.priority,
        status=TaskStatus(row.status),
        reason=row.reason,
        created_at=row.created_at,
        collector=row.collector,
        lease_id=row.lease_id,
        leased_at=row.leased_at,
        lease_until=row.lease_until,
        renewals=row.renewals,
        ended_at=row.ended_at,
        outcome=row.outcome,
    )


def _values(t: Task) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "case_id": t.case_id,
        "loan_id": t.loan_id,
        "borrower_id": t.borrower_id,
        "kind": t.kind.value,
        "queue": t.queue,
        "priority": t.priority,
        "status": t.status.value,
        "reason": t.reason,
        "created_at": t.created_at,
        "collector": t.collector,
        "lease_id": t.lease_id,
        "leased_at": t.leased_at,
        "lease_until": t.lease_until,
        "renewals": t.renewals,
        "ended_at": t.ended_at,
        "outcome": t.outcome,
    }


# What changes of a task after it is created (update_rows sets these by task_id).
_MUTABLE = (
    "status",
    "collector",
    "lease_id",
    "leased_at",
    "lease_until",
    "renewals",
    "ended_at",
    "outcome",
)


def _changes(t: Task) -> dict[str, Any]:
    values = _values(t)
    return {"task_id": t.task_id, **{k: values[k] for k in _MUTABLE}}


class TaskRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, task_id: str, *, lock: bool = False) -> Task | None:
        query = select(tasks).where(tasks.c.task_id == task_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return task_from_row(row) if row else None

    async def add(self, new: Sequence[Task]) -> list[Task]:
        rows = await insert_rows(
            self._conn,
            tasks,
            [_values(t) for t in new],
            on_conflict="ON CONFLICT DO NOTHING",
            returning="task_id",
        )
        inserted = {r[0] for r in rows}
        return [t for t in new if t.task_id in inserted]

    async def withdraw(
        self, withdrawals: Sequence[tuple[str, Withdrawal]], at: datetime
    ) -> list[Task]:
        # One statement for the whole batch (a consumed batch may close hundreds of cases).
        # A row joined twice would be updated once, by either: merge each case's first.
        merged: dict[str, Withdrawal] = {}
        for case_id, w in withdrawals:
            known = merged.get(case_id)
            if known is None or (w.kinds is None and known.kinds is not None):
                merged[case_id] = w
            elif known.kinds is not None and w.kinds is not None:
                merged[case_id] = Withdrawal(known.reason, known.kinds | w.kinds)
        targets = [
            [case_id, w.reason, None if w.kinds is None else sorted(k.value for k in w.kinds)]
            for case_id, w in merged.items()
            if w.kinds is None or w.kinds
        ]
        if not targets:
            return []
        rows = await self._conn.exec_driver_sql(
            _WITHDRAW, (orjson.dumps(targets).decode(), at, _LIVE)
        )
        return [task_from_row(r) for r in rows]

    async def save(self, changed: Sequence[Task]) -> None:
        await update_rows(self._conn, tasks, "task_id", [_changes(t) for t in changed])

    async def leases_run_out(self, now: datetime, limit: int) -> list[Task]:
        rows = await self._conn.execute(
            select(tasks)
            .where(tasks.c.status == TaskStatus.LEASED.value, tasks.c.lease_until <= now)
            .order_by(tasks.c.lease_until)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [task_from_row(r) for r in rows]

    async def candidates(self, queue: str, limit: int) -> list[Task]:
        leased = tasks.alias("leased")
        rows = await self._conn.execute(
            select(tasks)
            .where(
                tasks.c.queue == queue,
                tasks.c.status == TaskStatus.OPEN.value,
                ~exists().where(
                    leased.c.borrower_id == tasks.c.borrower_id,
                    leased.c.status == TaskStatus.LEASED.value,
                ),
            )
            .order_by(tasks.c.priority, tasks.c.created_at, tasks.c.task_id)
            .limit(limit)
        )
        return [task_from_row(r) for r in rows]

    async def lock_open(self, task_id: str) -> Task | None:
        # Locked one at a time: locking every candidate at once would hide them all from a
        # second collector asking at the same moment.
        row = (
            await self._conn.execute(
                select(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.status == TaskStatus.OPEN.value)
                .with_for_update(skip_locked=True)
            )
        ).first()
        return task_from_row(row) if row else None

    async def claim_borrower(self, borrower_id: str) -> bool:
        got = await self._conn.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"workflow.task-borrower:{borrower_id}"},
        )
        return bool(got)

    async def take(self, task: Task) -> bool:
        try:
            async with self._conn.begin_nested():
                await self.save([task])
        except IntegrityError as exc:
            if _ONE_LEASE_PER_BORROWER in str(exc.orig):
                return False
            raise
        return True

    async def record(
        self,
        steps: Sequence[TaskStep],
        *,
        at: datetime,
        actor: str,
        policy_version: str,
    ) -> None:
        await insert_rows(
            self._conn,
            timeline_rows,
            [
                {
                    "case_id": s.task.case_id,
                    "loan_id": s.task.loan_id,
                    "at": at,
                    "kind": s.kind,
                    "cause": s.cause,
                    "actor": actor,
                    "stage_before": None,
                    "stage_after": None,
                    "status_before": None,
                    "status_after": None,
                    "policy_version": policy_version,
                    "detail": {
                        "task_id": s.task.task_id,
                        "task_kind": s.task.kind.value,
                        "queue": s.task.queue,
                        **s.detail,
                    },
                }
                for s in steps
            ],
        )

    async def counts(self, now: datetime) -> list[QueueCount]:
        # A lease that ran out is waiting again, whether or not a "next" has reclaimed it.
        waiting = (tasks.c.status == TaskStatus.OPEN.value) | (tasks.c.lease_until <= now)
        rows = await self._conn.execute(
            select(
                tasks.c.queue,
                tasks.c.kind,
                func.count().filter(waiting).label("open"),
                func.count().filter(~waiting).label("leased"),
                func.min(case((waiting, tasks.c.created_at))).label("oldest_open"),
            )
            .where(tasks.c.status.in_(_LIVE))
            .group_by(tasks.c.queue, tasks.c.kind)
            .order_by(tasks.c.queue, tasks.c.kind)
        )
        return [QueueCount(r.queue, r.kind, r.open, r.leased, r.oldest_open) for r in rows]
