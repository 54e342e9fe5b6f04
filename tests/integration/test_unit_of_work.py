"""``SqlUnitOfWork`` against the real PostgreSQL: what commits together, what never commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, Table, Text, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit import contract as c
from collections_kit.clock import FixedClock
from collections_kit.db import make_engine, plumbing_tables
from collections_kit.settings import ServiceSettings
from collections_kit.uow import SqlUnitOfWork

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
metadata = MetaData()
notes = Table("notes", metadata, Column("id", Text, primary_key=True))
_, outbox = plumbing_tables(metadata)


class Notes:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, note_id: str) -> None:
        await self._conn.execute(insert(notes).values(id=note_id))


class NotesUnitOfWork(SqlUnitOfWork):
    notes: Notes

    def bind(self, conn: AsyncConnection) -> None:
        self.notes = Notes(conn)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield engine
    finally:
        await engine.dispose()


def start(engine: AsyncEngine) -> NotesUnitOfWork:
    settings = ServiceSettings(service_name="kit-test", topic_prefix="t.")
    return NotesUnitOfWork(engine, settings, FixedClock(NOW), outbox, actor="tester")


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        written = await conn.scalar(select(func.count()).select_from(notes))
        staged = await conn.scalar(select(func.count()).select_from(outbox))
    return int(written or 0), int(staged or 0)


def publish(uow: NotesUnitOfWork) -> None:
    uow.tx.publish(
        c.ContactCancelled(loan_id="L1", reason="repaid", cancelled_at=uow.now),
        event_id="ev-1",
        subject="L1",
    )


async def test_a_commit_writes_the_change_and_its_messages_together(engine: AsyncEngine) -> None:
    async with start(engine) as uow:
        assert uow.now == NOW
        assert uow.tx.actor == "tester"
        await uow.notes.add("n1")
        publish(uow)
        await uow.commit()
    assert await counts(engine) == (1, 1)


async def test_leaving_without_a_commit_rolls_back(engine: AsyncEngine) -> None:
    async with start(engine) as uow:
        await uow.notes.add("n1")
        publish(uow)
    assert await counts(engine) == (0, 0)


async def test_an_error_rolls_back_and_returns_the_connection(engine: AsyncEngine) -> None:
    async def add_then_fail() -> None:
        async with start(engine) as uow:
            await uow.notes.add("n1")
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await add_then_fail()
    assert await counts(engine) == (0, 0)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_unit_of_work_is_one_transaction(engine: AsyncEngine) -> None:
    uow = start(engine)
    async with uow:
        await uow.commit()
    with pytest.raises(RuntimeError, match="one transaction"):
        async with uow:
            pass
