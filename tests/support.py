"""Helpers for tests that cross the real broker and database."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from collections_kit.envelope import Envelope, MalformedMessageError, decode
from collections_kit.runtime import Runtime
from scripts.infra import read_to_end


async def read_topic(bootstrap: str, topic: str) -> list[Envelope | MalformedMessageError]:
    """Everything on ``topic`` right now, decoded (or the decoding error)."""
    out: list[Envelope | MalformedMessageError] = []
    for r in await read_to_end(bootstrap, [topic]):
        try:
            out.append(decode(r.key, r.value, r.headers))
        except MalformedMessageError as exc:
            out.append(exc)
    return out


def zone_at_midday() -> str:
    """A time zone where it is about noon now, so the contact window is open."""
    offset = max(min(12 - datetime.now(UTC).hour, 12), -12)
    # Etc/GMT names invert the sign: Etc/GMT-8 is UTC+8.
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def unused_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(check: Callable[[], Any], *, within: float = 30.0,
                     interval: float = 0.2) -> Any:
    """Await ``check()`` until it returns something truthy (async or not)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[Runtime]:
    """A service's real runtime (consumer loops, relay, workers) in this process."""
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def migrate(migrations: Any, url: str, schema: str) -> None:
    from collections_kit.migrate import upgrade

    # Alembic's env runs its own event loop; keep it off the test's loop.
    await asyncio.to_thread(upgrade, migrations, url, schema)


async def mismatched_replays(engine: Any) -> list[str]:
    """Loans whose stored case differs from the replay of its journal (should be none)."""
    from sqlalchemy import select

    from workflow.adapters.journal import journal_of, replay
    from workflow.adapters.repository import case_from_row
    from workflow.adapters.tables import cases
    from workflow.domain.policy import PolicyBook

    bad = []
    async with engine.connect() as conn:
        for row in (await conn.execute(select(cases))).all():
            stored = case_from_row(row)
            replayed = replay(await journal_of(conn, stored.case_id), PolicyBook())
            if replayed != stored:
                bad.append(stored.loan_id)
    return bad


def poll_of(records: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
            ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """What a consumer's ``getmany`` would return for these records (as from
    ``lending.record_for``), one partition per topic, topics in order of first appearance:
    for handing a loop a poll whose make-up a test decides."""
    poll: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
    for offset, (topic, key, value, headers) in enumerate(records):
        poll.setdefault(TopicPartition(topic, 0), []).append(ConsumerRecord(
            topic, 0, offset, 0, 0, key, value, None, len(key), len(value), headers))
    return poll
