"""Cases, intents and timeline in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from workflow.adapters.tables import cases, contact_intents, timeline
from workflow.domain.model import (
    Case,
    CaseStatus,
    ContactIntent,
    Exit,
    IntentStatus,
    TimelineEntry,
)
from workflow.domain.policy import Stage


def _case(row: Any) -> Case:
    return Case(
        case_id=row.case_id, loan_id=row.loan_id, borrower_id=row.borrower_id,
        product=row.product, currency=row.currency, stage=Stage(row.stage),
        status=CaseStatus(row.status), exit=Exit(row.exit) if row.exit else None,
        outstanding=row.outstanding, amount_overdue=row.amount_overdue,
        days_past_due=row.days_past_due, last_overdue_as_of=row.last_overdue_as_of,
        borrower_time_zone=row.borrower_time_zone, jurisdiction=row.jurisdiction,
        policy_version=row.policy_version, opened_at=row.opened_at, updated_at=row.updated_at,
    )


def _intent(row: Any) -> ContactIntent:
    return ContactIntent(
        intent_id=row.intent_id, case_id=row.case_id, loan_id=row.loan_id,
        stage=Stage(row.stage), channel=row.channel, recipient=row.recipient,
        template=row.template, status=IntentStatus(row.status), created_at=row.created_at,
        reason=row.reason, command_id=row.command_id, confirmation_id=row.confirmation_id,
    )


class CaseRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, loan_id: str, *, lock: bool = False) -> Case | None:
        stmt = select(cases).where(cases.c.loan_id == loan_id)
        if lock:
            # Serialises the handlers of one loan across replicas and the REST API.
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).first()
        return _case(row) if row else None

    async def pending_intents(self, loan_id: str) -> list[ContactIntent]:
        rows = await self._conn.execute(
            select(contact_intents).where(
                contact_intents.c.loan_id == loan_id,
                contact_intents.c.status == IntentStatus.AWAITING_CONFIRMATION.value,
            ))
        return [_intent(r) for r in rows]

    async def intent(self, intent_id: str) -> ContactIntent | None:
        row = (await self._conn.execute(
            select(contact_intents).where(contact_intents.c.intent_id == intent_id))).first()
        return _intent(row) if row else None

    async def intents_of(self, case_id: str) -> list[ContactIntent]:
        rows = await self._conn.execute(
            select(contact_intents).where(contact_intents.c.case_id == case_id)
            .order_by(contact_intents.c.created_at, contact_intents.c.intent_id))
        return [_intent(r) for r in rows]

    async def save(self, case: Case | None, intents: Sequence[ContactIntent],
                   entries: Sequence[TimelineEntry], subject: Case, *, at: datetime,
                   actor: str) -> None:
        if case is not None:
            values = {
                "case_id": case.case_id, "loan_id": case.loan_id,
                "borrower_id": case.borrower_id, "product": case.product,
                "currency": case.currency, "stage": case.stage.value,
                "status": case.status.value, "exit": case.exit.value if case.exit else None,
                "outstanding": case.outstanding, "amount_overdue": case.amount_overdue,
                "days_past_due": case.days_past_due,
                "last_overdue_as_of": case.last_overdue_as_of,
                "borrower_time_zone": case.borrower_time_zone,
                "jurisdiction": case.jurisdiction, "policy_version": case.policy_version,
                "opened_at": case.opened_at, "updated_at": case.updated_at,
            }
            stmt = pg_insert(cases).values(values)
            await self._conn.execute(stmt.on_conflict_do_update(
                index_elements=[cases.c.case_id],
                set_={k: stmt.excluded[k] for k in values if k not in ("case_id", "opened_at")},
            ))
        if intents:
            rows = [{
                "intent_id": i.intent_id, "case_id": i.case_id, "loan_id": i.loan_id,
                "stage": i.stage.value, "channel": i.channel, "recipient": i.recipient,
                "template": i.template, "status": i.status.value, "reason": i.reason,
                "command_id": i.command_id, "confirmation_id": i.confirmation_id,
                "created_at": i.created_at,
            } for i in intents]
            stmt = pg_insert(contact_intents).values(rows)
            await self._conn.execute(stmt.on_conflict_do_update(
                index_elements=[contact_intents.c.intent_id],
                set_={k: stmt.excluded[k] for k in ("status", "reason", "command_id",
                                                     "confirmation_id")},
            ))
        if entries:
            await self._conn.execute(timeline.insert(), [{
                "case_id": subject.case_id, "loan_id": subject.loan_id, "at": at,
                "kind": e.kind, "cause": e.cause, "actor": actor,
                "stage_before": e.stage_before.value if e.stage_before else None,
                "stage_after": e.stage_after.value if e.stage_after else None,
                "status_before": e.status_before.value if e.status_before else None,
                "status_after": e.status_after.value if e.status_after else None,
                "policy_version": e.policy_version, "detail": e.detail,
            } for e in entries])

    async def timeline_of(self, case_id: str, *, after_id: int = 0,
                          limit: int = 500) -> list[Any]:
        rows = await self._conn.execute(
            select(timeline).where(timeline.c.case_id == case_id, timeline.c.id > after_id)
            .order_by(timeline.c.id).limit(limit))
        return list(rows)

    async def summary(self) -> dict[str, Any]:
        by_stage = await self._conn.execute(
            select(cases.c.status, cases.c.stage, cases.c.exit, func.count())
            .group_by(cases.c.status, cases.c.stage, cases.c.exit))
        by_intent = await self._conn.execute(
            select(contact_intents.c.status, contact_intents.c.reason, func.count())
            .group_by(contact_intents.c.status, contact_intents.c.reason))
        return {
            "cases": [{"status": s, "stage": st, "exit": ex, "count": n}
                      for s, st, ex, n in by_stage],
            "intents": [{"status": s, "reason": r, "count": n} for s, r, n in by_intent],
        }
