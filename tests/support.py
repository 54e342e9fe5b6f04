"""Helpers for tests that cross the real broker and database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from collections_kit.db import asyncpg_dsn
from collections_kit.envelope import Envelope, MalformedMessageError, decode
from collections_kit.topics import Topic, topic_specs


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_topics(bootstrap: str, prefix: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1)
            for spec in topic_specs(prefix=prefix, partitions=partitions)])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([prefix + t.value for t in Topic])
    except Exception:
        pass
    finally:
        await admin.close()


async def producer(bootstrap: str) -> AIOKafkaProducer:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await p.start()
    return p


async def read_topic(bootstrap: str, topic: str) -> list[Envelope | MalformedMessageError]:
    """Everything on ``topic`` right now, decoded (or the decoding error)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p)
                      for p in (consumer.partitions_for_topic(topic)
                                or await _partitions(consumer, topic))]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[Envelope | MalformedMessageError] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    try:
                        out.append(decode(r.key, r.value, r.headers))
                    except MalformedMessageError as exc:
                        out.append(exc)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


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


async def migrate(migrations: Any, url: str, schema: str) -> None:
    from collections_kit.migrate import upgrade

    # Alembic's env runs its own event loop; keep it off the test's loop.
    await asyncio.to_thread(upgrade, migrations, url, schema)
