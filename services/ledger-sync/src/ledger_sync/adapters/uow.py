"""Ledger-sync's unit of work in PostgreSQL, and the reconciliation pass's lock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit.uow import SqlUnitOfWork
from ledger_sync.adapters.cases import CasesRepository, ReconciliationRepository
from ledger_sync.adapters.repository import LOCK_NAMESPACE, LedgerRepository


class SqlLedgerSyncUnitOfWork(SqlUnitOfWork):
    ledger: LedgerRepository
    cases: CasesRepository
    runs: ReconciliationRepository

    def bind(self, conn: AsyncConnection) -> None:
        self.ledger = LedgerRepository(conn)
        self.cases = CasesRepository(conn)
        self.runs = ReconciliationRepository(conn)


class ReconciliationLock:
    """A session-level advisory lock on a connection of its own, idle between statements
    (never an open transaction): a replica that dies releases it with its connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[bool]:
        key = (LOCK_NAMESPACE, func.hashtext("reconciliation"))
        async with self._engine.connect() as conn:
            got = bool(await conn.scalar(select(func.pg_try_advisory_lock(*key))))
            await conn.commit()  # session lock: kept without an open transaction
            if not got:
                yield False
                return
            try:
                yield True
            finally:
                # A broken connection has released the lock already, with the session.
                with contextlib.suppress(Exception):
                    await conn.scalar(select(func.pg_advisory_unlock(*key)))
                    await conn.commit()
