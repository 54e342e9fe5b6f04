"""The outbox relay hands committed rows to the broker as one record batch per partition:
each record lands on the partition ``producer.send`` chooses for its key (the producer's
own choice is the oracle here), a loan's messages keep the outbox's order across several
batches of one partition, every header and byte arrives, and the rows are gone after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import MetaData, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit import contract as c
from collections_kit.db import make_engine, plumbing_tables
from collections_kit.envelope import decode
from collections_kit.outbox import OutboxRelay, Tx, flush
from collections_kit.topics import Topic
from scripts.infra import read_to_end

SCHEMA = "relay_test"
_, outbox = plumbing_tables(MetaData())  # in the search path, as the services have it
LOANS = [f"L-{n:04d}" for n in range(40)]
PER_LOAN = 12


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    admin = make_engine(database_url)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    await admin.dispose()
    engine = make_engine(database_url, schema=SCHEMA)
    async with engine.begin() as conn:
        await conn.run_sync(outbox.metadata.create_all)
    yield engine
    await engine.dispose()


async def test_rows_go_out_in_batches_on_the_partition_send_would_choose(
    engine: AsyncEngine, database_url: str, stack: dict[str, str], topic_prefix: str
) -> None:
    now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=now, source="relay-test", topic_prefix=topic_prefix)
        for n in range(PER_LOAN):
            for loan in LOANS:
                tx.publish(
                    c.ContactCancelled(
                        loan_id=loan,
                        command_id=f"{n}:" + "x" * 200,
                        reason="repaid",
                        cancelled_at=now,
                    ),
                    event_id=f"{loan}/{n}",
                    subject=loan,
                    extensions={"traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01"},
                )
        await flush(tx, outbox, SCHEMA)
    topic = topic_prefix + Topic.CONTACT_COMMANDS.value
    # Small batches: a partition's records span several of them.
    producer = AIOKafkaProducer(
        bootstrap_servers=stack["kafka_bootstrap"],
        enable_idempotence=True,
        acks="all",
        max_batch_size=4096,
    )
    await producer.start()
    try:
        relay = OutboxRelay(engine, database_url, producer, outbox, SCHEMA, batch=10_000)
        assert await relay.drain_once() == len(LOANS) * PER_LOAN
        # The same partition count as the commands' topic (the test's topics all have it).
        chosen = {
            loan: (
                await producer.send_and_wait(
                    topic_prefix + Topic.DLQ.value, key=loan.encode(), value=b"x"
                )
            ).partition
            for loan in LOANS
        }
    finally:
        await producer.stop()

    seen: dict[str, list[int]] = {loan: [] for loan in LOANS}
    for record in await read_to_end(stack["kafka_bootstrap"], [topic]):
        envelope = decode(record.key, record.value, record.headers)
        assert isinstance(envelope.data, c.ContactCancelled)
        loan = envelope.data.loan_id
        n = int((envelope.data.command_id or "").split(":")[0])
        assert record.partition == chosen[loan]
        assert envelope.id == f"{loan}/{n}"
        assert envelope.extensions["traceparent"] == f"00-{n + 1:032x}-{n + 1:016x}-01"
        seen[loan].append(n)
    assert seen == {loan: list(range(PER_LOAN)) for loan in LOANS}
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(outbox)) == 0


class _RefusingBatch:
    """A record batch that takes nothing, as a full one would."""

    def append(self, **_: object) -> None:
        return None


async def test_a_record_no_batch_takes_fails_the_drain_and_its_rows_stay(
    engine: AsyncEngine, database_url: str, stack: dict[str, str], topic_prefix: str
) -> None:
    now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=now, source="relay-test", topic_prefix=topic_prefix)
        tx.publish(
            c.ContactCancelled(
                loan_id="L-0001", command_id="cmd-1", reason="repaid", cancelled_at=now
            ),
            event_id="L-0001/0",
            subject="L-0001",
        )
        await flush(tx, outbox, SCHEMA)
    producer = AIOKafkaProducer(bootstrap_servers=stack["kafka_bootstrap"])
    await producer.start()
    try:
        producer.create_batch = _RefusingBatch
        relay = OutboxRelay(engine, database_url, producer, outbox, SCHEMA)
        with pytest.raises(RuntimeError, match="refused outbox row"):
            await relay.drain_once()
    finally:
        await producer.stop()
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(outbox)) == 1
