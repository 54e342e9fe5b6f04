"""Dispatches, decisions, cancellations, repayments and contact details in PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.adapters.tables import (
    command_cancellations,
    contact_decisions,
    contact_details,
    dispatches,
    loan_cancellations,
    repayments,
)
from notifier.domain.model import (
    CANCELLABLE_STATUSES,
    OPEN_STATUSES,
    Cancellation,
    ContactDetails,
    ContactRequest,
    Dispatch,
    DispatchContext,
    DispatchStatus,
    Party,
    Repayment,
)

_OPEN = [s.value for s in OPEN_STATUSES]


def _request(row: Any) -> ContactRequest:
    return ContactRequest(
        command_id=row.command_id, intent_id=row.intent_id, case_id=row.case_id,
        loan_id=row.loan_id, borrower_id=row.borrower_id, recipient=row.recipient,
        channel=row.channel, stage=row.stage, template=row.template, currency=row.currency,
        amount_due=row.amount_due, confirmation_id=row.confirmation_id,
        ledger_watermark=row.ledger_watermark, confirmed_at=row.confirmed_at,
        confirmation_valid_until=row.confirmation_valid_until,
        borrower_time_zone=row.borrower_time_zone, jurisdiction=row.jurisdiction,
        issued_at=row.issued_at,
    )


def _dispatch(row: Any) -> Dispatch:
    return Dispatch(request=_request(row), status=DispatchStatus(row.status), due_at=row.due_at,
                    attempts=row.attempts, decision_seq=row.decision_seq)


def _details(row: Any) -> ContactDetails:
    has_guarantor = any((row.guarantor_name, row.guarantor_email, row.guarantor_phone,
                         row.guarantor_postal_address))
    return ContactDetails(
        borrower_id=row.borrower_id, language=row.language,
        debtor=Party(email=row.email, phone=row.phone, postal_address=row.postal_address),
        guarantor=Party(name=row.guarantor_name, email=row.guarantor_email,
                        phone=row.guarantor_phone,
                        postal_address=row.guarantor_postal_address) if has_guarantor else None,
    )


@dataclass(frozen=True)
class DecisionRecord:
    """One row for ``contact_decisions``."""

    dispatch: Dispatch
    decision: str
    reason: str
    rule: str
    policy_version: str
    at: datetime
    due_at: datetime | None = None


class DispatchRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # --- commands in ---------------------------------------------------------------------

    async def add(self, request: ContactRequest, *, now: datetime) -> bool:
        """Store a new command, due at once. False when it is known already."""
        values = {
            "command_id": request.command_id, "intent_id": request.intent_id,
            "case_id": request.case_id, "loan_id": request.loan_id,
            "borrower_id": request.borrower_id, "recipient": request.recipient,
            "channel": request.channel, "stage": request.stage, "template": request.template,
            "currency": request.currency, "amount_due": request.amount_due,
            "confirmation_id": request.confirmation_id,
            "ledger_watermark": request.ledger_watermark,
            "confirmed_at": request.confirmed_at,
            "confirmation_valid_until": request.confirmation_valid_until,
            "borrower_time_zone": request.borrower_time_zone,
            "jurisdiction": request.jurisdiction, "issued_at": request.issued_at,
            "status": DispatchStatus.PENDING.value, "due_at": now, "attempts": 0,
            "decision_seq": 0, "reason": "", "rule": "", "received_at": now,
            "updated_at": now,
        }
        stmt = (pg_insert(dispatches).values(values)
                .on_conflict_do_nothing(index_elements=[dispatches.c.command_id])
                .returning(dispatches.c.command_id))
        return (await self._conn.execute(stmt)).first() is not None

    async def remember_cancellation(self, loan_id: str, cancellation: Cancellation, *,
                                    now: datetime) -> None:
        if cancellation.command_id is not None:
            await self._conn.execute(
                pg_insert(command_cancellations).values(
                    command_id=cancellation.command_id, loan_id=loan_id,
                    cancelled_at=cancellation.cancelled_at, reason=cancellation.reason)
                .on_conflict_do_nothing(index_elements=[command_cancellations.c.command_id]))
            return
        stmt = pg_insert(loan_cancellations).values(
            loan_id=loan_id, cancelled_at=cancellation.cancelled_at,
            reason=cancellation.reason, updated_at=now)
        # Only ever forward: an older cancellation replayed late must not lower the mark.
        await self._conn.execute(stmt.on_conflict_do_update(
            index_elements=[loan_cancellations.c.loan_id],
            set_={"cancelled_at": stmt.excluded.cancelled_at, "reason": stmt.excluded.reason,
                  "updated_at": stmt.excluded.updated_at},
            where=loan_cancellations.c.cancelled_at < stmt.excluded.cancelled_at))

    async def cancellable(self, loan_id: str) -> list[Dispatch]:
        """The loan's commands not yet handed to a channel, locked against the dispatcher."""
        rows = await self._conn.execute(
            select(dispatches)
            .where(dispatches.c.loan_id == loan_id,
                   dispatches.c.status.in_([s.value for s in CANCELLABLE_STATUSES]))
            .order_by(dispatches.c.issued_at, dispatches.c.command_id)
            .with_for_update())
        return [_dispatch(r) for r in rows]

    async def record_repayment(self, *, repayment_id: str, loan_id: str, currency: str,
                               amount: object, received_at: datetime, now: datetime) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id, loan_id=loan_id, currency=currency, amount=amount,
            received_at=received_at, reversed_at=None, updated_at=now)
        # A reversal seen first left a row without received_at: complete it, keep reversed_at.
        await self._conn.execute(stmt.on_conflict_do_update(
            index_elements=[repayments.c.repayment_id],
            set_={"received_at": func.coalesce(repayments.c.received_at,
                                               stmt.excluded.received_at),
                  "updated_at": stmt.excluded.updated_at}))

    async def reverse_repayment(self, *, repayment_id: str, loan_id: str, currency: str,
                                amount: object, reversed_at: datetime, now: datetime) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id, loan_id=loan_id, currency=currency, amount=amount,
            received_at=None, reversed_at=reversed_at, updated_at=now)
        await self._conn.execute(stmt.on_conflict_do_update(
            index_elements=[repayments.c.repayment_id],
            set_={"reversed_at": stmt.excluded.reversed_at,
                  "updated_at": stmt.excluded.updated_at}))

    # --- the dispatcher ------------------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Dispatch]:
        """Rows whose time has come, locked; another replica skips them rather than wait.

        A row still ``sending`` whose lease (its ``due_at``) has run out belongs to a
        dispatcher that died or hung mid-call: it is taken again like a due one.
        """
        rows = await self._conn.execute(
            select(dispatches)
            .where(dispatches.c.status.in_(_OPEN), dispatches.c.due_at <= now)
            .order_by(dispatches.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True))
        return [_dispatch(r) for r in rows]

    async def contexts(self, batch: Sequence[Dispatch], *,
                       repayments_since: datetime) -> dict[str, DispatchContext]:
        """The context of each command in ``batch``, by command id, in a few queries."""
        if not batch:
            return {}
        loan_ids = sorted({d.request.loan_id for d in batch})
        command_ids = [d.command_id for d in batch]
        borrower_ids = sorted({d.request.borrower_id for d in batch})

        by_loan: dict[str, list[Cancellation]] = defaultdict(list)
        for row in await self._conn.execute(
                select(loan_cancellations).where(loan_cancellations.c.loan_id.in_(loan_ids))):
            by_loan[row.loan_id].append(Cancellation(row.reason, row.cancelled_at))
        by_command: dict[str, Cancellation] = {}
        for row in await self._conn.execute(
                select(command_cancellations)
                .where(command_cancellations.c.command_id.in_(command_ids))):
            by_command[row.command_id] = Cancellation(row.reason, row.cancelled_at,
                                                      row.command_id)
        paid: dict[str, list[Repayment]] = defaultdict(list)
        for row in await self._conn.execute(
                select(repayments).where(
                    repayments.c.loan_id.in_(loan_ids),
                    or_(repayments.c.received_at > repayments_since,
                        repayments.c.received_at.is_(None)))):
            paid[row.loan_id].append(Repayment(row.repayment_id, row.received_at,
                                               row.reversed_at is not None))
        details = {row.borrower_id: _details(row) for row in await self._conn.execute(
            select(contact_details).where(contact_details.c.borrower_id.in_(borrower_ids)))}

        out: dict[str, DispatchContext] = {}
        for d in batch:
            own = by_command.get(d.command_id)
            out[d.command_id] = DispatchContext(
                cancellations=tuple(by_loan.get(d.request.loan_id, ()))
                + ((own,) if own else ()),
                repayments=tuple(paid.get(d.request.loan_id, ())),
                details=details.get(d.request.borrower_id))
        return out

    async def mark_sending(self, dispatch: Dispatch, *, now: datetime,
                           lease_until: datetime) -> int:
        """Hand the row to a channel; returns the attempt number that owns it."""
        attempt = dispatch.attempts + 1
        await self._conn.execute(
            update(dispatches).where(dispatches.c.command_id == dispatch.command_id)
            .values(status=DispatchStatus.SENDING.value, due_at=lease_until, attempts=attempt,
                    updated_at=now))
        return attempt

    async def lock_sending(self, command_id: str, attempt: int) -> Dispatch | None:
        """The row, if it is still ``sending`` for this very attempt.

        Otherwise the lease ran out and another dispatcher took over: its outcome counts.
        """
        row = (await self._conn.execute(
            select(dispatches).where(
                dispatches.c.command_id == command_id,
                dispatches.c.status == DispatchStatus.SENDING.value,
                dispatches.c.attempts == attempt)
            .with_for_update())).first()
        return _dispatch(row) if row else None

    async def retry_later(self, dispatch: Dispatch, *, now: datetime, due_at: datetime,
                          error: str) -> None:
        await self._conn.execute(
            update(dispatches).where(dispatches.c.command_id == dispatch.command_id)
            .values(status=DispatchStatus.PENDING.value, due_at=due_at, last_error=error,
                    updated_at=now))

    async def record(self, record: DecisionRecord, *, status: DispatchStatus,
                     error: str | None = None) -> int:
        """Apply a decision to its dispatch and append it to the audit trail; returns its
        sequence number (which also numbers the outcome event)."""
        d = record.dispatch
        seq = d.decision_seq + 1
        values: dict[str, Any] = {"status": status.value, "decision_seq": seq,
                                  "reason": record.reason, "rule": record.rule,
                                  "updated_at": record.at}
        if record.due_at is not None:
            values["due_at"] = record.due_at
        if error is not None:
            values["last_error"] = error
        await self._conn.execute(
            update(dispatches).where(dispatches.c.command_id == d.command_id).values(values))
        await self._conn.execute(contact_decisions.insert().values(
            command_id=d.command_id, seq=seq, loan_id=d.request.loan_id,
            channel=d.request.channel, recipient=d.request.recipient,
            decision=record.decision, reason=record.reason, rule=record.rule,
            policy_version=record.policy_version, at=record.at, due_at=record.due_at))
        return seq

    async def next_due(self) -> datetime | None:
        due: datetime | None = await self._conn.scalar(
            select(func.min(dispatches.c.due_at)).where(dispatches.c.status.in_(_OPEN)))
        return due

    # --- reports ---------------------------------------------------------------------------

    async def decisions_of(self, loan_id: str, *, after_id: int = 0,
                           limit: int = 500) -> list[Any]:
        rows = await self._conn.execute(
            select(contact_decisions)
            .where(contact_decisions.c.loan_id == loan_id, contact_decisions.c.id > after_id)
            .order_by(contact_decisions.c.id).limit(limit))
        return list(rows)

    async def summary(self) -> dict[str, Any]:
        rows = await self._conn.execute(
            select(contact_decisions.c.decision, contact_decisions.c.reason,
                   contact_decisions.c.rule, func.count())
            .group_by(contact_decisions.c.decision, contact_decisions.c.reason,
                      contact_decisions.c.rule)
            .order_by(contact_decisions.c.decision, contact_decisions.c.reason))
        by_decision = [{"decision": d, "reason": r, "rule": rule, "count": n}
                       for d, r, rule, n in rows]
        totals: dict[str, int] = defaultdict(int)
        for item in by_decision:
            totals[item["decision"]] += item["count"]
        statuses = await self._conn.execute(
            select(dispatches.c.status, func.count()).group_by(dispatches.c.status))
        return {"by_decision": by_decision, "totals": dict(sorted(totals.items())),
                "dispatches": {s: n for s, n in statuses}}


class ContactDetailsRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def put(self, details: ContactDetails, *, now: datetime) -> None:
        guarantor = details.guarantor or Party()
        values = {
            "borrower_id": details.borrower_id, "language": details.language,
            "email": details.debtor.email, "phone": details.debtor.phone,
            "postal_address": details.debtor.postal_address,
            "guarantor_name": guarantor.name, "guarantor_email": guarantor.email,
            "guarantor_phone": guarantor.phone,
            "guarantor_postal_address": guarantor.postal_address, "updated_at": now,
        }
        stmt = pg_insert(contact_details).values(values)
        await self._conn.execute(stmt.on_conflict_do_update(
            index_elements=[contact_details.c.borrower_id],
            set_={k: stmt.excluded[k] for k in values if k != "borrower_id"}))

    async def get(self, borrower_id: str) -> tuple[ContactDetails, datetime] | None:
        row = (await self._conn.execute(
            select(contact_details).where(contact_details.c.borrower_id == borrower_id))).first()
        return (_details(row), row.updated_at) if row else None
