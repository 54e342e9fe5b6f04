"""Contact permits in PostgreSQL: the permits, their anchor command, and their attempts.

A granted permit's attempt lives in ``contact_attempts`` beside every automated one (its
``command_id`` is the permit id, its actor the person's), so the caps count both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import insert_rows
from notifier.adapters.repository import request_of
from notifier.adapters.tables import (
    contact_attempts,
    contact_permits,
    dispatches,
    loan_confirmations,
)
from notifier.domain.model import AttemptResult, ContactRequest
from notifier.domain.permits import (
    NO_CONFIRMATIONS,
    CheckAnswered,
    CheckRequested,
    ConfirmationView,
    Granted,
    LedgerConfirmation,
    Permit,
    PermitAsk,
    PermitDecision,
    PermitResult,
    Refused,
)


def _permit(row: Any) -> Permit:
    return Permit(
        permit_id=row.permit_id,
        loan_id=row.loan_id,
        recipient=row.recipient,
        channel=row.channel,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        decision=row.decision,
        reason=row.reason,
        rule=row.rule,
        asked_at=row.asked_at,
        expires_at=row.expires_at,
        result_by=row.result_by,
        result=row.result,
        result_at=row.result_at,
        actor_from=row.actor_kind_from,
        detail=row.detail,
        retry_after=row.retry_after,
        confirmation_id=row.confirmation_id,
    )


# A batch's checks and answers are written a statement each (a statement per record was
# 28% of the notifier's py-spy samples in the pipeline benchmark, most of them waiting on
# the database: bench/HISTORY.md). The conditions are those of one record at a time: a
# request takes the row over only if it is not older than the one there, and a permit
# refusal's request (asked_at) is then answered by it if not later; an answer always names
# its check, and its confirmation stays only if fresher than the one there (a refusal, or
# a republished older answer, keeps what is there).
_T = f'"{loan_confirmations.name}"'
_REQUESTED = (
    'ON CONFLICT ("loan_id") DO UPDATE SET '
    '"requested_check_id" = EXCLUDED."requested_check_id", '
    '"requested_at" = EXCLUDED."requested_at", '
    f'"asked_at" = CASE WHEN {_T}."asked_at" <= EXCLUDED."requested_at" THEN NULL '
    f'ELSE {_T}."asked_at" END, '
    '"updated_at" = EXCLUDED."updated_at" '
    f'WHERE {_T}."requested_at" IS NULL OR {_T}."requested_at" <= EXCLUDED."requested_at"'
)
_FRESHER = f'({_T}."confirmed_at" IS NULL OR {_T}."confirmed_at" < EXCLUDED."confirmed_at")'
_ANSWERED = (
    'ON CONFLICT ("loan_id") DO UPDATE SET '
    '"answered_check_id" = EXCLUDED."answered_check_id", '
    '"updated_at" = EXCLUDED."updated_at", '
    + ", ".join(
        f'"{name}" = COALESCE(CASE WHEN {_FRESHER} THEN EXCLUDED."{name}" '
        f'ELSE {_T}."{name}" END, {_T}."{name}")'
        for name in (
            "confirmation_id",
            "ledger_watermark",
            "confirmed_outstanding",
            "confirmed_at",
            "valid_until",
        )
    )
)


class PermitRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def anchor(self, loan_id: str) -> ContactRequest | None:
        """The loan's latest contact command: the case, the borrower's jurisdiction and
        time zone, the stage and the ledger confirmation a person's contact rests on."""
        row = (
            await self._conn.execute(
                select(dispatches)
                .where(dispatches.c.loan_id == loan_id)
                .order_by(
                    dispatches.c.issued_at.desc(),
                    dispatches.c.confirmed_at.desc(),
                    dispatches.c.command_id.desc(),
                )
                .limit(1)
            )
        ).first()
        return request_of(row) if row is not None else None

    async def confirmations(self, loan_id: str) -> ConfirmationView:
        """The loan's freshest ledger confirmation, and since when one has been on its way
        (a check the workflow asked for and nobody answered yet, or a permit refusal's
        request that no check has answered yet)."""
        row = (
            await self._conn.execute(
                select(loan_confirmations).where(loan_confirmations.c.loan_id == loan_id)
            )
        ).first()
        if row is None:
            return NO_CONFIRMATIONS
        latest = (
            LedgerConfirmation(
                row.confirmation_id,
                row.ledger_watermark,
                row.confirmed_outstanding,
                row.confirmed_at,
                row.valid_until,
            )
            if row.confirmed_at is not None
            else None
        )
        waiting: list[datetime] = []
        if row.requested_at is not None and row.requested_check_id != row.answered_check_id:
            waiting.append(row.requested_at)
        if row.asked_at is not None and (
            row.confirmed_at is None or row.confirmed_at < row.asked_at
        ):
            waiting.append(row.asked_at)
        return ConfirmationView(latest, max(waiting) if waiting else None)

    async def check_requested(
        self, loan_id: str, check_id: str, at: datetime, *, now: datetime
    ) -> None:
        """The workflow asked ledger-sync for a confirmation: one is on its way (a request
        the notifier made is now this check)."""
        await self.checks_requested([CheckRequested(loan_id, check_id, at)], now=now)

    async def check_answered(
        self, loan_id: str, check_id: str, confirmation: LedgerConfirmation | None, *, now: datetime
    ) -> None:
        """Ledger-sync answered a check: a confirmation (kept if it is the freshest) or a
        refusal (None: nothing to rest on, and nothing on its way any more)."""
        await self.checks_answered([CheckAnswered(loan_id, check_id, confirmation)], now=now)

    async def checks_requested(self, requests: Sequence[CheckRequested], *, now: datetime) -> None:
        """``check_requested`` for each, in order, as one statement: per loan only the
        latest request (the last of equal times) can change the row, as one at a time."""
        latest: dict[str, CheckRequested] = {}
        for request in requests:
            known = latest.get(request.loan_id)
            if known is None or known.requested_at <= request.requested_at:
                latest[request.loan_id] = request
        rows = [
            {
                "loan_id": r.loan_id,
                "requested_check_id": r.check_id,
                "requested_at": r.requested_at,
                "updated_at": now,
            }
            for r in latest.values()
        ]
        await insert_rows(self._conn, loan_confirmations, rows, on_conflict=_REQUESTED)

    async def checks_answered(self, answers: Sequence[CheckAnswered], *, now: datetime) -> None:
        """``check_answered`` for each, in order, as one statement: per loan the last
        answer's check and the freshest confirmation (the first of equal times), which is
        what one at a time leaves."""
        last: dict[str, CheckAnswered] = {}
        freshest: dict[str, LedgerConfirmation] = {}
        for answer in answers:
            last[answer.loan_id] = answer
            c = answer.confirmation
            kept = freshest.get(answer.loan_id)
            if c is not None and (kept is None or kept.confirmed_at < c.confirmed_at):
                freshest[answer.loan_id] = c
        rows = []
        for loan_id, answer in last.items():
            c = freshest.get(loan_id)
            rows.append(
                {
                    "loan_id": loan_id,
                    "answered_check_id": answer.check_id,
                    "updated_at": now,
                    "confirmation_id": c.confirmation_id if c else None,
                    "ledger_watermark": c.ledger_watermark if c else None,
                    "confirmed_outstanding": c.confirmed_outstanding if c else None,
                    "confirmed_at": c.confirmed_at if c else None,
                    "valid_until": c.valid_until if c else None,
                }
            )
        await insert_rows(self._conn, loan_confirmations, rows, on_conflict=_ANSWERED)

    async def confirmation_asked(self, loan_id: str, *, now: datetime) -> None:
        """A permit refusal asked the workflow for a confirmation: one is on its way."""
        t = loan_confirmations
        stmt = pg_insert(t).values(loan_id=loan_id, asked_at=now, updated_at=now)
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.loan_id], set_={"asked_at": now, "updated_at": now}
            )
        )

    async def settle_unreported(self, person: str, *, now: datetime) -> None:
        """Permits whose result never came in time count as ``unknown`` from then on: the
        call may have happened, and may have been a conversation (the worst case)."""
        await self._conn.execute(
            update(contact_attempts)
            .where(
                contact_attempts.c.person == person,
                contact_attempts.c.actor_kind != "system",
                contact_attempts.c.result == "pending",
                contact_attempts.c.settles_by <= now,
            )
            .values(result="unknown", settles_by=None, updated_at=now)
        )

    async def record(
        self,
        permit_id: str,
        ask: PermitAsk,
        decision: PermitDecision,
        *,
        actor_kind_from: str,
        anchor: ContactRequest,
        person: str,
        number: str | None,
        policy_version: str,
        now: datetime,
        expires_at: datetime,
        result_by: datetime,
    ) -> None:
        """Keep the permit; a granted one counts at once, as an attempt in flight until its
        result is reported or ``result_by`` passes (the worst case for every cap)."""
        granted = isinstance(decision, Granted)
        refused = decision if isinstance(decision, Refused) else None
        await self._conn.execute(
            contact_permits.insert().values(
                permit_id=permit_id,
                loan_id=ask.loan_id,
                recipient=ask.recipient,
                channel=ask.channel,
                actor_kind=ask.actor_kind,
                actor_id=ask.actor_id,
                actor_kind_from=actor_kind_from,
                decision="granted" if granted else "refused",
                reason=refused.reason if refused else "all_checks_passed",
                rule=decision.rule,
                detail=refused.detail if refused else "",
                policy_version=policy_version,
                anchor_command_id=anchor.command_id,
                confirmation_id=anchor.confirmation_id,
                asked_at=now,
                expires_at=expires_at if granted else None,
                result_by=result_by if granted else None,
                retry_after=refused.retry_after if refused else None,
            )
        )
        if not granted:
            return
        await self._conn.execute(
            contact_attempts.insert().values(
                command_id=permit_id,
                loan_id=ask.loan_id,
                person=person,
                channel=ask.channel,
                number_key=number,
                attempted_at=now,
                result="pending",
                settles_by=result_by,
                updated_at=now,
                actor_kind=ask.actor_kind,
                actor_id=ask.actor_id,
            )
        )

    async def get(self, permit_id: str, *, lock: bool = False) -> Permit | None:
        query = select(contact_permits).where(contact_permits.c.permit_id == permit_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return _permit(row) if row is not None else None

    async def record_result(
        self, permit_id: str, result: PermitResult, attempt: AttemptResult, *, now: datetime
    ) -> None:
        """The holder's report, on the permit and on its attempt (counted once: the attempt
        is one row, whatever is reported)."""
        await self._conn.execute(
            update(contact_permits)
            .where(contact_permits.c.permit_id == permit_id)
            .values(result=result, result_at=now)
        )
        await self._conn.execute(
            update(contact_attempts)
            .where(contact_attempts.c.command_id == permit_id)
            .values(result=attempt, settles_by=None, updated_at=now)
        )

    async def of_loan(self, loan_id: str, *, limit: int = 200) -> Sequence[Permit]:
        rows = await self._conn.execute(
            select(contact_permits)
            .where(contact_permits.c.loan_id == loan_id)
            .order_by(contact_permits.c.asked_at, contact_permits.c.permit_id)
            .limit(limit)
        )
        return [_permit(r) for r in rows]

    async def summary(self) -> list[tuple[str, str, str, int]]:
        """Permits by decision, reason and actor kind: (decision, reason, actor_kind, n)."""
        rows = await self._conn.execute(
            select(
                contact_permits.c.decision,
                contact_permits.c.reason,
                contact_permits.c.actor_kind,
                func.count(),
            )
            .group_by(
                contact_permits.c.decision, contact_permits.c.reason, contact_permits.c.actor_kind
            )
            .order_by(contact_permits.c.decision, contact_permits.c.reason)
        )
        return [(d, r, k, n) for d, r, k, n in rows]
