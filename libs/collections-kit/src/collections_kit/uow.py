"""The unit of work: one database transaction, the repositories bound to it, and the
messages it stages for the outbox (the shape of cosmicpython's ``uow``).

The app layer opens one, works through the repositories it exposes, and commits::

    async with self._uow() as uow:
        case = await uow.cases.get(loan_id, lock=True)
        ...
        await uow.commit()  # the staged messages are written first: they commit together

Leaving the block without ``commit`` (an exception, an early return, a read) rolls back,
so a half-done change never commits by accident and a read holds nothing afterwards.
The app layer sees only this shape: SQL stays in each service's adapters, which subclass
:class:`SqlUnitOfWork` to bind their repositories; the app's unit tests use in-memory fakes.
(A consumed batch's transaction is the consumer loop's own, handed to handlers as a
:class:`~collections_kit.outbox.Tx`: the inbox rows must commit with it.)
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit.clock import Clock
from collections_kit.outbox import Tx, flush
from collections_kit.settings import ServiceSettings


class UnitOfWork(Protocol):
    """What the app layer needs of a transaction; each service's adds its repositories."""

    @property
    def tx(self) -> Tx:
        """The transaction's time and actor, and the messages it will publish."""
        ...

    @property
    def now(self) -> datetime: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class SqlUnitOfWork:
    """A PostgreSQL transaction on a connection of ``engine``'s pool.

    Subclasses bind their repositories to the connection in :meth:`bind`. ``commit``
    writes the staged messages to the outbox (waking the relays at commit) and commits;
    leaving without it rolls back. One instance is one transaction: make a new one for the
    next (services pass a factory, ``partial(MyUnitOfWork, engine, ...)``).
    """

    tx: Tx

    def __init__(
        self,
        engine: AsyncEngine,
        settings: ServiceSettings,
        clock: Clock,
        outbox: Table,
        *,
        actor: str = "system",
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._outbox = outbox
        self._actor = actor
        self._conn: AsyncConnection | None = None

    @property
    def now(self) -> datetime:
        return self.tx.now

    def bind(self, conn: AsyncConnection) -> None:
        """Make the repositories of ``conn``'s transaction (overridden per service)."""

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("a unit of work is one transaction: make a new one")
        self._conn = conn = await self._engine.connect()
        try:
            await conn.begin()
            # The transaction's time is taken as it begins, as every handler's always was.
            self.tx = Tx(
                conn=conn,
                now=self._clock.now(),
                source=self._settings.service_name,
                topic_prefix=self._settings.topic_prefix,
                actor=self._actor,
                outbox=self._outbox,
                schema=self._settings.db_schema,
            )
            self.bind(conn)
        except BaseException:
            await conn.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._connection()
        try:
            if conn.in_transaction():
                await conn.rollback()
        finally:
            await conn.close()

    async def commit(self) -> None:
        conn = self._connection()
        await flush(self.tx)
        await conn.commit()

    async def rollback(self) -> None:
        await self._connection().rollback()

    def _connection(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("the unit of work was not entered")
        return self._conn
