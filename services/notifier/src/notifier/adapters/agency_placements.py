"""Which cases are placed with which agency now, as the workflow announces them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.adapters.tables import agency_placements


class AgencyPlacementRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def placed(
        self, *, loan_id: str, borrower_id: str, agency: str, placement_id: str, now: datetime
    ) -> None:
        stmt = pg_insert(agency_placements).values(
            loan_id=loan_id,
            borrower_id=borrower_id,
            agency=agency,
            placement_id=placement_id,
            running=True,
            updated_at=now,
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[agency_placements.c.loan_id],
                set_={
                    "borrower_id": stmt.excluded.borrower_id,
                    "agency": stmt.excluded.agency,
                    "placement_id": stmt.excluded.placement_id,
                    "running": True,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )

    async def recalled(self, *, loan_id: str, placement_id: str, now: datetime) -> None:
        # Only the placement recalled: a later one of the loan (none yet, notices of a loan
        # arrive in order) is not ended by an earlier recall.
        await self._conn.execute(
            update(agency_placements)
            .where(
                agency_placements.c.loan_id == loan_id,
                agency_placements.c.placement_id == placement_id,
            )
            .values(running=False, updated_at=now)
        )

    async def placed_with(self, agency: str, borrower_id: str) -> bool:
        """Is a case of this borrower placed with this agency now?"""
        found = await self._conn.scalar(
            select(
                exists().where(
                    agency_placements.c.borrower_id == borrower_id,
                    agency_placements.c.agency == agency,
                    agency_placements.c.running.is_(True),
                )
            )
        )
        return bool(found)
