"""The notifier's unit of work in PostgreSQL: its repositories on one transaction."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit.clock import Clock
from collections_kit.pii import KeyRing
from collections_kit.settings import ServiceSettings
from collections_kit.uow import SqlUnitOfWork
from notifier.adapters.agency_placements import AgencyPlacementRepository
from notifier.adapters.permits import PermitRepository
from notifier.adapters.repository import (
    ContactDetailsRepository,
    DispatchRepository,
    PreferencesRepository,
)


class SqlNotifierUnitOfWork(SqlUnitOfWork):
    dispatches: DispatchRepository
    contact_details: ContactDetailsRepository
    preferences: PreferencesRepository
    permits: PermitRepository
    agency_placements: AgencyPlacementRepository

    def __init__(
        self,
        engine: AsyncEngine,
        settings: ServiceSettings,
        clock: Clock,
        outbox: Table,
        *,
        ring: KeyRing,
        actor: str = "system",
    ) -> None:
        super().__init__(engine, settings, clock, outbox, actor=actor)
        # Contact details are encrypted at rest: read and written with the key ring.
        self._ring = ring

    def bind(self, conn: AsyncConnection) -> None:
        self.dispatches = DispatchRepository(conn, self._ring)
        self.contact_details = ContactDetailsRepository(conn, self._ring)
        self.preferences = PreferencesRepository(conn)
        self.permits = PermitRepository(conn)
        self.agency_placements = AgencyPlacementRepository(conn)
