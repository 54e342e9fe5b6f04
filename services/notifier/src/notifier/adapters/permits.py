"""Contact permits in PostgreSQL: the permits, their anchor command, and their attempts.

A granted permit's attempt lives in ``contact_attempts`` beside every automated one (its
``command_id`` is the permit id, its actor the person's), so the caps count both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.adapters.repository import request_of
from notifier.adapters.tables import contact_attempts, contact_permits, dispatches
from notifier.domain.model import AttemptResult, ContactRequest
from notifier.domain.permits import (
    Granted,
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
