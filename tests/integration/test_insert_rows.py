"""``insert_rows``/``update_rows``: a batch sent as one JSON document arrives exactly as
Python had it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.db import (
    asyncpg_dsn,
    insert_rows,
    make_engine,
    on_conflict_update,
    update_rows,
)

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Text, primary_key=True),
    Column("amount", Numeric(20, 6)),
    Column("at", DateTime(timezone=True)),
    Column("count", Integer),
    Column("big", BigInteger),
    Column("raw", LargeBinary),
    Column("detail", JSONB),
    Column("note", Text),
    Column("flag", Boolean),
)

ROWS: list[dict[str, Any]] = [
    {
        "id": "a",
        "amount": Decimal("1234.567891"),
        "big": 2**62,
        "count": -3,
        "at": datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC),
        "raw": b"\x00\xffkey\\x",
        "detail": {"hold": None, "list": [1, "二"], "n": 1.5},
        "note": 'quote " backslash \\ tab \t 中文 emoji \U0001f600',
        "flag": True,
    },
    {
        "id": "b",
        "amount": None,
        "big": None,
        "count": None,
        "at": datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=8))),
        "raw": b"",
        "detail": [],
        "note": "",
        "flag": False,
    },
    {
        "id": "c",
        "amount": Decimal("-0.000001"),
        "big": 0,
        "count": 0,
        "at": None,
        "raw": None,
        "detail": None,
        "note": None,
        "flag": None,
    },
    {
        "id": "d",
        "amount": Decimal("99999999999999.999999"),
        "big": -(2**63),
        "count": 2**31 - 1,
        "at": datetime(1970, 1, 1, tzinfo=UTC),
        "raw": b"\\x00",
        "detail": "null",
        "note": "null",
        "flag": True,
    },
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose ``things`` table holds ``ROWS``, written by ``insert_rows``."""
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await insert_rows(conn, things, ROWS)
        yield engine
    finally:
        await engine.dispose()


async def _stored(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        return {r.id: r._asdict() for r in await conn.execute(select(things))}


async def test_every_kind_of_value_round_trips_and_conflicts_update(engine: AsyncEngine) -> None:
    got = await _stored(engine)
    for row in ROWS:
        assert got[row["id"]] == row
    assert got["b"]["at"] == datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    async with engine.connect() as conn:
        # None in a JSONB column is SQL NULL (what ``IS NULL`` queries look for); the
        # string "null" is a JSON string.
        nulls = (
            (await conn.execute(text("SELECT id FROM things WHERE detail IS NULL ORDER BY id")))
            .scalars()
            .all()
        )
        assert nulls == ["c"]

    async with engine.begin() as conn:
        again = [{**ROWS[0], "note": "second", "count": 7}]
        await insert_rows(
            conn, things, again, on_conflict=on_conflict_update("id", ["note", "count"])
        )
        await insert_rows(
            conn, things, [{**ROWS[1], "note": "ignored"}], on_conflict="ON CONFLICT DO NOTHING"
        )
        await insert_rows(conn, things, [])
    notes = {key: row["note"] for key, row in (await _stored(engine)).items()}
    assert notes == {"a": "second", "b": "", "c": None, "d": "null"}


async def test_update_rows_sets_only_the_given_columns_of_matching_rows(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await update_rows(
            conn,
            things,
            "id",
            [
                {"id": "a", "amount": Decimal("0.000001"), "raw": b"\x01"},
                {"id": "c", "amount": Decimal("99"), "raw": None},
                {"id": "nobody", "amount": Decimal("1"), "raw": b""},
            ],
        )
    got = await _stored(engine)
    assert got["a"] == {**ROWS[0], "amount": Decimal("0.000001"), "raw": b"\x01"}
    assert got["b"] == ROWS[1]
    assert got["c"] == {**ROWS[2], "amount": Decimal("99")}
    assert got["d"] == ROWS[3]
    assert set(got) == {"a", "b", "c", "d"}


async def test_notify_rides_the_insert_and_arrives_at_commit(
    engine: AsyncEngine, database_url: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await listener.add_listener("things_written", lambda *args: heard.put_nowait(args[2]))
        async with engine.begin() as conn:
            await insert_rows(
                conn, things, [{"id": "n1", "note": "x"}, {"id": "n2"}], notify="things_written"
            )
            await asyncio.sleep(0.2)
            assert heard.empty()  # not before the commit
        assert await asyncio.wait_for(heard.get(), 10) == "things_written"
        assert heard.empty()  # one notification for the statement, not one per row
    finally:
        await listener.close()
    got = await _stored(engine)
    assert got["n1"]["note"] == "x"
    assert got["n2"]["note"] is None
    with pytest.raises(ValueError, match="returning and notify do not combine"):
        async with engine.begin() as conn:
            await insert_rows(conn, things, [{"id": "n3"}], returning="id", notify="c")
