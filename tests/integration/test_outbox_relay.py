"""The outbox relay hands committed rows to the broker as one record batch per partition:
each record lands on the partition ``producer.send`` chooses for its key (the producer's
own choice is the oracle here), a loan's messages keep the outbox's order across several
batches of one partition, every header and byte arrives, and nothing is left to relay
after. The relay's position: it stops at a gap until the gap is settled, never skips a
row committed late, and relayed rows are truncated together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import MetaData, event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit import contract as c
from collections_kit import outbox as outbox_module
from collections_kit.db import make_engine, plumbing_tables
from collections_kit.envelope import decode
from collections_kit.outbox import Along, OutboxRelay, Tx, flush, waiting
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
        assert await waiting(conn, outbox) == 0


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
        assert await waiting(conn, outbox) == 1


def _stage(conn: object, topic_prefix: str, loan: str, n: int) -> Tx:
    now = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    tx = Tx(conn=conn, now=now, source="relay-test", topic_prefix=topic_prefix)  # type: ignore[arg-type]
    tx.publish(
        c.ContactCancelled(loan_id=loan, command_id=f"cmd-{n}", reason="repaid", cancelled_at=now),
        event_id=f"{loan}/{n}",
        subject=loan,
    )
    return tx


async def _relayed_ids(bootstrap: str, topic_prefix: str) -> list[str]:
    records = await read_to_end(bootstrap, [topic_prefix + Topic.CONTACT_COMMANDS.value])
    return [decode(r.key, r.value, r.headers).id for r in records]


async def test_the_relay_waits_for_a_lower_id_that_commits_late(
    engine: AsyncEngine, database_url: str, stack: dict[str, str], topic_prefix: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    await producer.start()
    try:
        relay = OutboxRelay(engine, database_url, producer, outbox, SCHEMA)
        async with engine.connect() as late:
            await late.begin()
            tx = _stage(late, topic_prefix, "L-1", 1)
            await flush(tx, outbox, SCHEMA)  # takes id 1 and stays open
            async with engine.begin() as conn:
                await flush(_stage(conn, topic_prefix, "L-1", 2), outbox, SCHEMA)
            # id 2 is committed, id 1 is not: publishing 2 would put it ahead of 1 for
            # good (and the position past 1 would lose it).
            assert await relay.drain_once() == 0
            await late.commit()
        assert await relay.drain_once() == 2
        assert await _relayed_ids(stack["kafka_bootstrap"], topic_prefix) == ["L-1/1", "L-1/2"]
        # A relay started afresh (another replica, a restart) starts from the position.
        again = OutboxRelay(engine, database_url, producer, outbox, SCHEMA)
        assert await again.drain_once() == 0
    finally:
        await producer.stop()


async def test_a_gap_left_by_a_rollback_is_settled_and_stepped_over(
    engine: AsyncEngine,
    database_url: str,
    stack: dict[str, str],
    topic_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "_GAP_PATIENCE_S", 0.0)
    producer = AIOKafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    await producer.start()
    try:
        relay = OutboxRelay(engine, database_url, producer, outbox, SCHEMA)
        async with engine.connect() as rolled_back:
            await rolled_back.begin()
            await flush(_stage(rolled_back, topic_prefix, "L-2", 1), outbox, SCHEMA)
            await rolled_back.rollback()
        async with engine.begin() as conn:
            await flush(_stage(conn, topic_prefix, "L-2", 2), outbox, SCHEMA)
        assert await relay.drain_once() == 0  # the gap at id 1, first seen
        assert await relay.drain_once() == 1  # settled: id 1 will never come
        assert await _relayed_ids(stack["kafka_bootstrap"], topic_prefix) == ["L-2/2"]
    finally:
        await producer.stop()


async def test_relayed_rows_are_truncated_together_and_ids_go_on(
    engine: AsyncEngine,
    database_url: str,
    stack: dict[str, str],
    topic_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "_TRUNCATE_AFTER_S", 0.0)
    monkeypatch.setattr(outbox_module, "_TRUNCATE_RETRY_S", 0.0)
    producer = AIOKafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    await producer.start()
    try:
        relay = OutboxRelay(engine, database_url, producer, outbox, SCHEMA)
        async with engine.begin() as conn:
            tx = _stage(conn, topic_prefix, "L-3", 1)
            tx.staged += _stage(conn, topic_prefix, "L-3", 2).staged
            await flush(tx, outbox, SCHEMA)
        file = text("SELECT pg_relation_filenode('outbox')")
        async with engine.connect() as conn:
            before = await conn.scalar(file)
        assert await relay.drain_once() == 2
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(outbox)) == 0
            # Truncated (a new file), not deleted row by row.
            assert await conn.scalar(file) != before
        async with engine.begin() as conn:
            await flush(_stage(conn, topic_prefix, "L-3", 3), outbox, SCHEMA)
        assert await relay.drain_once() == 1
        assert await _relayed_ids(stack["kafka_bootstrap"], topic_prefix) == [
            "L-3/1",
            "L-3/2",
            "L-3/3",
        ]
    finally:
        await producer.stop()


async def test_a_write_along_the_outbox_row_is_one_statement_in_the_order_staged(
    engine: AsyncEngine,
) -> None:
    """``flush(along=...)``: the caller's write runs in the statement that writes the outbox
    row (one round trip for both), with every message staged so far; what is staged after
    goes in the next row, after it. With nothing staged the write still runs, alone. A
    transaction that does not know its outbox says so rather than lose the write."""
    now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE notes (n int NOT NULL)")
    statements: list[str] = []

    def on_execute(*args: object) -> None:
        statements.append(str(args[2]))

    def cancelled(n: int) -> c.ContactCancelled:
        return c.ContactCancelled(
            loan_id="L-1", command_id=f"cmd-{n}", reason="repaid", cancelled_at=now
        )

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        async with engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=now,
                source="relay-test",
                topic_prefix="",
                outbox=outbox,
                schema=SCHEMA,
            )
            tx.publish(cancelled(1), event_id="e-1", subject="L-1")
            tx.publish(cancelled(2), event_id="e-2", subject="L-1")
            statements.clear()
            noted = "noted AS (INSERT INTO notes SELECT n FROM unnest($1::int[]) AS n)"
            assert await flush(tx, along=Along(noted, [1, 2])) == 2
            assert len(statements) == 1
            tx.publish(cancelled(3), event_id="e-3", subject="L-1")
            assert await flush(tx) == 1
            assert await flush(tx, along=Along(noted, [3])) == 0
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.payloads).order_by(outbox.c.id))).all()
        ids = [
            [c.ContactCancelled.model_validate_json(p).command_id for p in r.payloads] for r in rows
        ]
        assert ids == [["cmd-1", "cmd-2"], ["cmd-3"]]
        assert sorted((await conn.exec_driver_sql("SELECT n FROM notes")).scalars()) == [1, 2, 3]
        alone = Tx(conn=conn, now=now, source="relay-test", topic_prefix="")
        alone.publish(cancelled(4), event_id="e-4", subject="L-1")
        with pytest.raises(ValueError, match="does not know its outbox"):
            await flush(alone, along=Along(noted, [4]))
