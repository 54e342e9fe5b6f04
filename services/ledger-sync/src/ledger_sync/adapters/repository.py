"""The ledger projection in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import any_of, insert_rows
from ledger_sync.adapters.tables import (
    balance_answers,
    buffered_postings,
    loan_balances,
    pending_checks,
    repayments,
)
from ledger_sync.domain.ledger import Posting, Projection

# First key of ledger-sync's two-key advisory locks (the second is a hash of the loan id):
# keeps them apart from the kit's one-key locks (outbox relay, migrations).
LOCK_NAMESPACE = 0x4C53  # "LS"

# One row per requested check, in request order. The locking read is its own CTE (in loan
# order, the order every locker uses): PostgreSQL refuses FOR UPDATE on the nullable side of
# the outer join that keeps a check whose loan has no projection yet. The subqueries mean
# exactly has_gap() and money_in_flight(), and whether a check of the loan waits for the
# ledger's API (pending_checks).
_CHECK_CONTEXTS = text("""
    WITH req AS (
        SELECT r.loan_id, r.check_id, r.n
        FROM unnest(CAST(:loans AS text[]), CAST(:checks AS text[]))
             WITH ORDINALITY AS r(loan_id, check_id, n)),
    p AS MATERIALIZED (
        SELECT b.loan_id, b.currency, b.balance, b.watermark, b.updated_at, b.verified_at
        FROM loan_balances b WHERE b.loan_id = ANY(CAST(:loans AS text[]))
        ORDER BY b.loan_id FOR UPDATE)
    SELECT p.loan_id, p.currency, p.balance, p.watermark, p.updated_at, p.verified_at,
        EXISTS (SELECT 1 FROM buffered_postings g WHERE g.loan_id = req.loan_id) AS has_gap,
        EXISTS (SELECT 1 FROM pending_checks c WHERE c.loan_id = req.loan_id) AS has_pending,
        (SELECT coalesce(sum(r.amount), 0) FROM repayments r
          WHERE r.loan_id = req.loan_id AND NOT r.booked AND NOT r.reversed
            AND r.amount IS NOT NULL) AS in_flight,
        a.answer_type, a.payload AS answer_payload
    FROM req LEFT JOIN p ON p.loan_id = req.loan_id
        LEFT JOIN balance_answers a ON a.check_id = req.check_id
    ORDER BY req.n""")


# (check id, loan id, answer type, payload, (currency, outstanding) the collections side
# holds once it has the answer)
StoredAnswer = tuple[str, str, str, dict[str, Any], tuple[str, Decimal]]


@dataclass(frozen=True)
class CheckContext:
    projection: Projection | None
    has_gap: bool
    has_pending: bool
    money_in_flight: Decimal
    # The answer this very check already got (asked again: the same answer again).
    previous: PreviousAnswer | None


@dataclass(frozen=True)
class PreviousAnswer:
    answer_type: str
    payload: dict[str, Any]


class LedgerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def projection(self, loan_id: str, *, lock: bool = False) -> Projection | None:
        stmt = select(loan_balances).where(loan_balances.c.loan_id == loan_id)
        if lock:
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).first()
        if row is None:
            return None
        return Projection(
            row.loan_id, row.currency, row.balance, row.watermark, row.updated_at, row.verified_at
        )

    async def lock_projection(self, loan_id: str) -> Projection | None:
        """The projection, locked against every other writer of this loan until commit.

        A row lock cannot protect a row that does not exist yet, and two writers (the feed's
        consumer and a repair from the ledger's API) may both be about to create it; so
        without a row they serialise on a per-loan advisory lock and look again.
        """
        current = await self.projection(loan_id, lock=True)
        if current is not None:
            return current
        await self._conn.execute(
            select(func.pg_advisory_xact_lock(LOCK_NAMESPACE, func.hashtext(loan_id)))
        )
        return await self.projection(loan_id, lock=True)

    async def buffered(self, loan_id: str) -> tuple[Posting, ...]:
        rows = await self._conn.execute(
            select(buffered_postings)
            .where(buffered_postings.c.loan_id == loan_id)
            .order_by(buffered_postings.c.sequence)
        )
        return tuple(
            Posting(
                r.posting_id,
                r.loan_id,
                r.sequence,
                r.kind,
                r.currency,
                r.amount,
                r.booked_at,
                r.repayment_id,
            )
            for r in rows
        )

    async def check_contexts(self, checks: Sequence[tuple[str, str]]) -> list[CheckContext]:
        """What answering each ``(loan id, check id)`` reads, for checks of distinct loans,
        in one round trip: the answer the check already got if it was asked before, the
        projection (locked until commit, as ``projection(lock=True)``), whether a sequence
        gap or an earlier check waiting for the ledger's API holds the loan back, and the
        money in flight. Per-statement round trips were most of ledger-sync's cost under
        load (bench/HISTORY.md)."""
        rows = await self._conn.execute(
            _CHECK_CONTEXTS,
            {"loans": [loan for loan, _ in checks], "checks": [check for _, check in checks]},
        )
        contexts = []
        for row in rows:
            projection = None
            if row.loan_id is not None:
                projection = Projection(
                    row.loan_id,
                    row.currency,
                    row.balance,
                    row.watermark,
                    row.updated_at,
                    row.verified_at,
                )
            previous = (
                PreviousAnswer(row.answer_type, row.answer_payload)
                if row.answer_type is not None
                else None
            )
            contexts.append(
                CheckContext(
                    projection,
                    bool(row.has_gap),
                    bool(row.has_pending),
                    Decimal(row.in_flight or 0),
                    previous,
                )
            )
        return contexts

    async def has_gap(self, loan_id: str) -> bool:
        count = await self._conn.scalar(
            select(func.count())
            .select_from(buffered_postings)
            .where(buffered_postings.c.loan_id == loan_id)
        )
        return bool(count)

    async def save_projection(
        self,
        projection: Projection,
        applied: tuple[Posting, ...],
        still_buffered: tuple[Posting, ...],
    ) -> None:
        values = {
            "loan_id": projection.loan_id,
            "currency": projection.currency,
            "balance": projection.balance,
            "watermark": projection.watermark,
            "updated_at": projection.updated_at,
            "verified_at": projection.verified_at,
        }
        stmt = pg_insert(loan_balances).values(values)
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[loan_balances.c.loan_id],
                set_={
                    k: stmt.excluded[k]
                    for k in ("balance", "watermark", "updated_at", "verified_at")
                },
            )
        )
        await self._conn.execute(
            delete(buffered_postings).where(
                buffered_postings.c.loan_id == projection.loan_id,
                buffered_postings.c.sequence <= projection.watermark,
            )
        )
        if still_buffered:
            stmt = pg_insert(buffered_postings).values(
                [
                    {
                        "loan_id": p.loan_id,
                        "sequence": p.sequence,
                        "posting_id": p.posting_id,
                        "kind": p.kind,
                        "currency": p.currency,
                        "amount": p.amount,
                        "booked_at": p.booked_at,
                        "repayment_id": p.repayment_id,
                    }
                    for p in still_buffered
                ]
            )
            await self._conn.execute(stmt.on_conflict_do_nothing())
        booked = [p.repayment_id for p in applied if p.repayment_id and p.kind == "repayment"]
        for repayment_id in booked:
            await self.mark_booked(repayment_id, projection.loan_id)

    async def mark_booked(self, repayment_id: str, loan_id: str) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id, loan_id=loan_id, booked=True, reversed=False
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[repayments.c.repayment_id], set_={"booked": True}
            )
        )

    async def record_repayment(
        self, repayment_id: str, loan_id: str, amount: Decimal, received_at: Any
    ) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id,
            loan_id=loan_id,
            amount=amount,
            received_at=received_at,
            booked=False,
            reversed=False,
        )
        # If the ledger booked it first, keep booked=true: it must not count twice.
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[repayments.c.repayment_id],
                set_={"amount": amount, "received_at": received_at},
            )
        )

    async def record_reversal(self, repayment_id: str, loan_id: str) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id, loan_id=loan_id, booked=False, reversed=True
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[repayments.c.repayment_id], set_={"reversed": True}
            )
        )

    async def money_in_flight(self, loan_id: str) -> Decimal:
        total = await self._conn.scalar(
            select(func.coalesce(func.sum(repayments.c.amount), 0)).where(
                and_(
                    repayments.c.loan_id == loan_id,
                    repayments.c.booked.is_(False),
                    repayments.c.reversed.is_(False),
                    repayments.c.amount.is_not(None),
                )
            )
        )
        return Decimal(total or 0)

    async def save_answer(
        self,
        check_id: str,
        loan_id: str,
        answer_type: str,
        payload: dict[str, Any],
        at: Any,
        figure: tuple[str, Decimal],
    ) -> None:
        await self.save_answers([(check_id, loan_id, answer_type, payload, figure)], at)

    async def save_answers(self, answers: Sequence[StoredAnswer], at: Any) -> None:
        """``(check id, loan id, answer type, payload, (currency, outstanding))`` each; the
        figure is what the collections side holds once it has the answer (the
        ``collections_views`` view reads it: no row of its own per check). A check
        answered already keeps its first answer."""
        await insert_rows(
            self._conn,
            balance_answers,
            [
                {
                    "check_id": check,
                    "loan_id": loan,
                    "answer_type": kind,
                    "payload": payload,
                    "answered_at": at,
                    "collections_currency": currency,
                    "collections_outstanding": outstanding,
                }
                for check, loan, kind, payload, (currency, outstanding) in answers
            ],
            on_conflict="ON CONFLICT DO NOTHING",
        )

    # --- balance checks waiting for the ledger's API -------------------------------------

    async def enqueue_check(
        self, check_id: str, loan_id: str, payload: dict[str, Any], at: datetime
    ) -> None:
        # The same check asked again while it waits stays one entry: it gets one answer.
        await self._conn.execute(
            pg_insert(pending_checks)
            .values(
                check_id=check_id,
                loan_id=loan_id,
                payload=payload,
                queued_at=at,
            )
            .on_conflict_do_nothing()
        )

    async def claim_pending(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[PendingCheck]:
        """Lease up to ``limit`` waiting checks, oldest first, to this replica."""
        free = or_(pending_checks.c.claimed_until.is_(None), pending_checks.c.claimed_until < now)
        ids = (
            select(pending_checks.c.check_id)
            .where(free)
            .order_by(pending_checks.c.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        rows = await self._conn.execute(
            update(pending_checks)
            .where(pending_checks.c.check_id.in_(ids))
            .values(claimed_until=now + lease, attempts=pending_checks.c.attempts + 1)
            .returning(
                pending_checks.c.check_id,
                pending_checks.c.seq,
                pending_checks.c.loan_id,
                pending_checks.c.payload,
            )
        )
        return sorted(
            (PendingCheck(r.check_id, r.seq, r.loan_id, r.payload) for r in rows),
            key=lambda p: p.seq,
        )

    async def take_pending(self, check_ids: Sequence[str]) -> list[PendingCheck]:
        """Remove and return those of ``check_ids`` still waiting (another replica may have
        answered some after its lease ran out)."""
        if not check_ids:
            return []
        rows = await self._conn.execute(
            delete(pending_checks)
            .where(any_of(pending_checks.c.check_id, list(check_ids)))
            .returning(
                pending_checks.c.check_id,
                pending_checks.c.seq,
                pending_checks.c.loan_id,
                pending_checks.c.payload,
            )
        )
        return sorted(
            (PendingCheck(r.check_id, r.seq, r.loan_id, r.payload) for r in rows),
            key=lambda p: p.seq,
        )


@dataclass(frozen=True)
class PendingCheck:
    check_id: str
    seq: int
    loan_id: str
    payload: dict[str, Any]
