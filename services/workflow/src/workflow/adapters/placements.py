"""Agency placements and their commission in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import any_of, insert_rows, on_conflict_update
from workflow.adapters.tables import placement_commissions, placements
from workflow.domain.placement import (
    REVERSED,
    Accrual,
    Placement,
    PlacementOutcome,
    RecallReason,
)


def placement_from_row(row: Any) -> Placement:
    m = row._mapping
    return Placement(
        placement_id=m["placement_id"],
        case_id=m["case_id"],
        loan_id=m["loan_id"],
        agency=m["agency"],
        tier=m["tier"],
        tier_index=m["tier_index"],
        commission_rate=m["commission_rate"],
        currency=m["currency"],
        placed_at=m["placed_at"],
        until=m["until"],
        amount_placed=m["amount_placed"],
        policy_version=m["policy_version"],
        collected=m["collected"],
        commission=m["commission"],
        ended_at=m["ended_at"],
        end_reason=RecallReason(m["end_reason"]) if m["end_reason"] else None,
    )


def _values(p: Placement) -> dict[str, Any]:
    return {
        "placement_id": p.placement_id,
        "case_id": p.case_id,
        "loan_id": p.loan_id,
        "agency": p.agency,
        "tier": p.tier,
        "tier_index": p.tier_index,
        "commission_rate": p.commission_rate,
        "currency": p.currency,
        "placed_at": p.placed_at,
        "until": p.until,
        "amount_placed": p.amount_placed,
        "policy_version": p.policy_version,
        "collected": p.collected,
        "commission": p.commission,
        "ended_at": p.ended_at,
        "end_reason": p.end_reason.value if p.end_reason else None,
    }


# What changes of a placement after it began: its money and its end.
_UPSERT = on_conflict_update("placement_id", ("collected", "commission", "ended_at", "end_reason"))


@dataclass
class PlacementBatch:
    """The newest placement of each loan a batch touches, kept current as it decides."""

    newest: dict[str, Placement]
    # By placement id, in the order first changed: an ended placement is written before
    # the one that follows it, so the one-running-per-loan index holds row by row.
    changed: dict[str, Placement] = field(default_factory=dict)
    accruals: list[Accrual] = field(default_factory=list)
    # (loan id, repayment id) -> the commission that repayment accrued and nobody took back
    # yet: loaded for the batch's reversals, and each accrued in the batch (none: it
    # accrued nothing, or was reversed before). Kept current by ``record``.
    reversible: dict[tuple[str, str], Accrual] = field(default_factory=dict)

    def record(self, outcome: PlacementOutcome) -> None:
        for p in outcome.placements:
            self.changed[p.placement_id] = p
            known = self.newest.get(p.loan_id)
            if known is None or known.placement_id == p.placement_id or p.is_active:
                self.newest[p.loan_id] = p
            # A reversal later in the batch takes back from the placement as it is then,
            # not as loaded (two reversals against one ended placement would undo one).
            for key, a in list(self.reversible.items()):
                if a.placement.placement_id == p.placement_id:
                    self.reversible[key] = replace(a, placement=p)
        self.accruals.extend(outcome.accruals)
        # A repayment accrued in this batch can be reversed later in it (a backlog read at
        # once after a restart): what was loaded before the batch does not know it.
        for a in outcome.accruals:
            if a.repayment_id.endswith(REVERSED):
                self.reversible.pop((a.placement.loan_id, a.repayment_id[: -len(REVERSED)]), None)
            else:
                self.reversible[(a.placement.loan_id, a.repayment_id)] = a

    def take_reversible(self, loan_id: str, repayment_id: str) -> Accrual | None:
        """The commission a reversed repayment accrued and nobody took back yet (None: it
        accrued none, or it was taken back before), once."""
        return self.reversible.pop((loan_id, repayment_id), None)


class PlacementRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def load_for_batch(self, loan_ids: Sequence[str]) -> PlacementBatch:
        """Each loan's running placement, or else its newest ended one (the cases are
        locked by the caller first: placements change only with their case)."""
        rows = await self._conn.execute(
            select(placements)
            .where(any_of(placements.c.loan_id, sorted(set(loan_ids))))
            .ext(distinct_on(placements.c.loan_id))
            .order_by(
                placements.c.loan_id,
                placements.c.ended_at.is_(None).desc(),
                # The newest: written last (times tie for those made in one batch).
                placements.c.seq.desc(),
            )
        )
        return PlacementBatch({p.loan_id: p for p in map(placement_from_row, rows)})

    async def load_reversible(
        self, batch: PlacementBatch, reversals: Sequence[tuple[str, str]]
    ) -> None:
        """The accruals the batch's reversals take back, each with its placement."""
        if not reversals:
            return
        ids = sorted({r for _, r in reversals} | {f"{r}{REVERSED}" for _, r in reversals})
        pc = placement_commissions.c
        rows = await self._conn.execute(
            select(
                placements,
                pc.repayment_id.label("accrued_repayment_id"),
                pc.amount.label("accrued_amount"),
                pc.commission.label("accrued_commission"),
            )
            .join(placement_commissions, placements.c.placement_id == pc.placement_id)
            .where(
                any_of(pc.loan_id, sorted({loan for loan, _ in reversals})),
                any_of(pc.repayment_id, ids),
            )
        )
        found: dict[tuple[str, str], Accrual] = {}
        undone: set[tuple[str, str]] = set()
        for row in rows:
            m = row._mapping
            key = (m["loan_id"], m["accrued_repayment_id"])
            if key[1].endswith(REVERSED):
                undone.add((key[0], key[1].removesuffix(REVERSED)))
                continue
            found[key] = Accrual(
                placement_from_row(row), key[1], m["accrued_amount"], m["accrued_commission"]
            )
        batch.reversible = {
            k: a for k, a in found.items() if k not in undone and k in set(reversals)
        }

    async def write_batch(self, batch: PlacementBatch, at: datetime) -> None:
        await insert_rows(
            self._conn,
            placements,
            [_values(p) for p in batch.changed.values()],
            on_conflict=_UPSERT,
        )
        await insert_rows(
            self._conn,
            placement_commissions,
            [
                {
                    "placement_id": a.placement.placement_id,
                    "repayment_id": a.repayment_id,
                    "agency": a.placement.agency,
                    "loan_id": a.placement.loan_id,
                    "currency": a.placement.currency,
                    "amount": a.amount,
                    "commission": a.commission,
                    "at": at,
                }
                for a in batch.accruals
            ],
            on_conflict="ON CONFLICT DO NOTHING",
        )

    async def running_of(
        self, agency: str, *, after: str | None = None, limit: int = 100
    ) -> list[Placement]:
        """The agency's running placements in loan-id order (keyset pagination)."""
        stmt = select(placements).where(
            placements.c.agency == agency, placements.c.ended_at.is_(None)
        )
        if after:
            stmt = stmt.where(placements.c.loan_id > after)
        rows = await self._conn.execute(stmt.order_by(placements.c.loan_id).limit(limit))
        return [placement_from_row(r) for r in rows]

    async def running(self, loan_id: str) -> Placement | None:
        row = (
            await self._conn.execute(
                select(placements).where(
                    placements.c.loan_id == loan_id, placements.c.ended_at.is_(None)
                )
            )
        ).first()
        return placement_from_row(row) if row else None

    async def commission_of(self, agency: str) -> list[dict[str, Any]]:
        """Per currency: what the agency collected while cases were placed with it, and the
        commission that accrued on it."""
        rows = await self._conn.execute(
            select(
                placement_commissions.c.currency,
                # Payments; a reversal's row (negative) only takes its money back.
                func.count().filter(placement_commissions.c.amount > 0),
                func.sum(placement_commissions.c.amount),
                func.sum(placement_commissions.c.commission),
            )
            .where(placement_commissions.c.agency == agency)
            .group_by(placement_commissions.c.currency)
            .order_by(placement_commissions.c.currency)
        )
        return [
            {"currency": cur, "payments": n, "collected": collected, "commission": commission}
            for cur, n, collected, commission in rows
        ]

    async def placed_of(self, agency: str) -> list[dict[str, Any]]:
        """Per currency: the placements made with the agency and the balance placed with it,
        each placement counted once at the balance it was placed with. A case recalled for
        a hold and resumed within its period is the same placement (same case, tier and
        period end): its resumption is not placed again."""
        p = placements.c
        first = (
            select(p.currency, p.amount_placed)
            .where(p.agency == agency)
            .ext(distinct_on(p.case_id, p.tier_index, p.until))
            .order_by(p.case_id, p.tier_index, p.until, p.placed_at)
            .subquery()
        )
        rows = await self._conn.execute(
            select(first.c.currency, func.count(), func.sum(first.c.amount_placed))
            .group_by(first.c.currency)
            .order_by(first.c.currency)
        )
        return [
            {"currency": cur, "placements": int(n), "placed": placed} for cur, n, placed in rows
        ]

    async def recalls_of(self, agency: str) -> dict[str, int]:
        """The agency's ended placements by why they ended (the recall's reason)."""
        rows = await self._conn.execute(
            select(placements.c.end_reason, func.count())
            .where(placements.c.agency == agency, placements.c.ended_at.is_not(None))
            .group_by(placements.c.end_reason)
        )
        return {reason: int(n) for reason, n in rows}

    async def placed_counts(self, agency: str) -> dict[str, int]:
        """How many placements the agency holds now, and has held in all."""
        running = placements.c.ended_at.is_(None)
        row = (
            await self._conn.execute(
                select(func.count(), func.count().filter(running)).where(
                    placements.c.agency == agency
                )
            )
        ).one()
        return {"placements": int(row[0]), "running": int(row[1])}
