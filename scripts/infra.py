"""Local infrastructure chores shared by the demo, the tests and the benchmarks:
a database per run, a topic set per prefix, a producer."""

from __future__ import annotations

import time
from collections.abc import Iterable

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from collections_kit.db import asyncpg_dsn
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
        await admin.create_topics(
            [
                NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1)
                for spec in topic_specs(prefix=prefix, partitions=partitions)
            ]
        )
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


async def read_to_end(
    bootstrap: str, topics: Iterable[str], *, within: float = 120.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on ``topics`` up to their end offsets as of the call, in partition
    order. No consumer group, nothing committed. Raises if the end is not reached in
    ``within`` seconds, rather than waiting forever on a partition that never gets there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        deadline = time.monotonic() + within
        while remaining:
            if time.monotonic() > deadline:
                behind = {
                    f"{tp.topic}/{tp.partition}": (await consumer.position(tp), ends[tp])
                    for tp in remaining
                }
                raise TimeoutError(f"not read to the end in {within}s (position, end): {behind}")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
            # Every partition still open, not only those in this fetch.
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return out
    finally:
        await consumer.stop()
