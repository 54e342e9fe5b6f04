"""Local infrastructure chores shared by the demo, the tests and the benchmarks:
a database per run, a topic set per prefix, a producer."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaProducer
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
