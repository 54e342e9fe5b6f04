"""Contact permits in PostgreSQL: the permits, their anchor command, and their attempts.

A granted permit's attempt lives in ``contact_attempts`` beside every automated one (its
``command_id`` is the permit id, its actor the person's), so the caps count both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

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
        t = loan_confirmations
        stmt = pg_insert(t).values(
            loan_id=loan_id, requested_check_id=check_id, requested_at=at, updated_at=now
        )
        newer = t.c.requested_at.is_(None) | (t.c.requested_at <= stmt.excluded.requested_at)
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.loan_id],
                set_={
                    "requested_check_id": stmt.excluded.requested_check_id,
                    "requested_at": stmt.excluded.requested_at,
                    # A permit refusal's request is now this check (if it came after it).
                    "asked_at": case(
                        (t.c.asked_at <= stmt.excluded.requested_at, None), else_=t.c.asked_at
                    ),
                    "updated_at": now,
                },
                where=newer,
            )
        )

    async def check_answered(
        self, loan_id: str, check_id: str, confirmation: LedgerConfirmation | None, *, now: datetime
    ) -> None:
        """Ledger-sync answered a check: a confirmation (kept if it is the freshest) or a
        refusal (None: nothing to rest on, and nothing on its way any more)."""
        t = loan_confirmations
        values: dict[str, Any] = {
            "loan_id": loan_id,
            "answered_check_id": check_id,
            "updated_at": now,
        }
        if confirmation is not None:
            values |= {
                "confirmation_id": confirmation.confirmation_id,
                "ledger_watermark": confirmation.ledger_watermark,
                "confirmed_outstanding": confirmation.confirmed_outstanding,
                "confirmed_at": confirmation.confirmed_at,
                "valid_until": confirmation.valid_until,
            }
        stmt = pg_insert(t).values(**values)
        fresher = t.c.confirmed_at.is_(None) | (t.c.confirmed_at < stmt.excluded.confirmed_at)
        keep = {
            # A refusal or an older confirmation (a republished answer) keeps the freshest.
            name: func.coalesce(case((fresher, stmt.excluded[name]), else_=t.c[name]), t.c[name])
            for name in (
                "confirmation_id",
                "ledger_watermark",
                "confirmed_outstanding",
                "confirmed_at",
                "valid_until",
            )
        }
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.loan_id],
                set_={**keep, "answered_check_id": check_id, "updated_at": now},
            )
        )

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
