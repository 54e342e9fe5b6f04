"""A database that is restarting answers "cannot connect now" (SQLSTATE 57P03) or ends
sessions with "admin shutdown" (57P01). Through asyncpg and SQLAlchemy these arrive as a
plain ``DBAPIError``, not an ``OperationalError``: the consumer took them for a handler
failure and dead-lettered good records during a PostgreSQL restart (seen in `make chaos`,
2026-12-04: 188 workflow events lost). A tiny server speaking the start of the PostgreSQL
protocol refuses the way a restarting PostgreSQL does, so the real driver stack raises
exactly what it raises then."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from collections_kit.db import database_unavailable, make_engine


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        code + value.encode() + b"\0"
        for code, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


async def _refusing(sqlstate: str, message: str) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack("!I", await reader.readexactly(4))[0]
                payload = await reader.readexactly(length - 4)
                if payload[:4] == struct.pack("!I", 80877103):  # SSLRequest: no TLS here
                    writer.write(b"N")
                    await writer.drain()
                    continue
                writer.write(_error_response(sqlstate, message))  # to the startup message
                await writer.drain()
                return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql+asyncpg://u:p@127.0.0.1:{port}/db"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57P03", "the database system is shutting down"),
        ("57P03", "the database system is starting up"),
        ("57P01", "terminating connection due to administrator command"),
        ("53300", "sorry, too many clients already"),
        ("08006", "connection failure"),
    ],
)
async def test_a_restarting_database_is_unavailable_not_a_bad_record(
    sqlstate: str, message: str
) -> None:
    async for url in _refusing(sqlstate, message):
        engine = make_engine(url, pool_size=1)
        try:
            with pytest.raises(Exception) as caught:  # noqa: PT011 - what it is, is the test
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        assert database_unavailable(caught.value), repr(caught.value)


async def test_a_statement_the_database_refuses_is_not_unavailability() -> None:
    async for url in _refusing("42501", "permission denied for database db"):
        engine = make_engine(url, pool_size=1)
        try:
            with pytest.raises(Exception) as caught:  # noqa: PT011
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        assert not database_unavailable(caught.value), repr(caught.value)


def test_a_plain_error_is_not_unavailability() -> None:
    assert not database_unavailable(ValueError("amount must not be negative"))
