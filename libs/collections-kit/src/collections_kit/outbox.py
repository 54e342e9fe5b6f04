"""The transactional outbox and its relay.

Handlers never produce to Kafka. They stage messages in the ``outbox`` table inside the
same transaction as their state change; the relay publishes committed rows with an
idempotent producer and moves its position (``outbox_relayed``, one row) past them in the
transaction that read them. A crash at any point leaves either nothing or a row that will
be (re)published: at-least-once on the wire, made exactly-once in effect by the
consumers' inbox, because every message keeps its ``ce_id``.

Relayed rows are not deleted one by one (a DELETE writes every row a second time): they
are truncated together, once enough have accumulated or the outbox has gone quiet.

The position is only moved over ids that can no longer appear below it. Ids are taken
when a row is inserted, so a transaction may commit a lower id after a higher one: the
relay publishes the unbroken run of ids after its position and stops at a gap. A gap that
lasts (its transaction rolled back, or is slow to commit) is settled by taking the table
in SHARE mode for a moment: that waits for every transaction that has inserted into the
outbox (they hold ROW EXCLUSIVE until they end) and for no other, after which every id up
to the highest present is final, and a missing one was rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry.trace import Span
from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit import metrics, tracing
from collections_kit.contract import SPEC_BY_MODEL, Message
from collections_kit.db import asyncpg_dsn, relayed_table, sqlstates
from collections_kit.envelope import Envelope, encode_text_headers
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker

log = logging.getLogger(__name__)
# The backlog gauges are refreshed at most this often; the count stops at the cap.
_MEASURE_EVERY_S = 1.0
_COUNT_CAP = 100_000
# The producer's own default: records of one key (one loan) always share a partition.
_PARTITIONER = DefaultPartitioner()
# How long a gap at the front of the outbox may hold the relay before it is settled (see
# above): a transaction that inserted into the outbox is committing, which takes a few
# milliseconds, so most gaps fill by themselves well within this.
_GAP_PATIENCE_S = 0.05
# Relayed rows are truncated once this many messages have been relayed since the last
# truncation, or once the outbox is drained and the last truncation is this old. Seldom:
# each truncation holds the outbox's writers for a moment (below), and relayed rows (a
# transaction's messages each) cost only their space while they wait.
_TRUNCATE_AFTER_MESSAGES = 100_000
_TRUNCATE_AFTER_S = 60.0
# The truncation's ACCESS EXCLUSIVE lock waits for the transactions inserting at that
# moment and makes new ones wait behind it: never longer than this (it tries again later).
_TRUNCATE_LOCK_TIMEOUT = "100ms"
# ... and publishes at most this many messages that came since the last batch while it holds
# the lock (more, and it tries again at the earliest this much later).
_TRUNCATE_LEFTOVERS = 500
_TRUNCATE_RETRY_S = 1.0
_SETTLE_LOCK_TIMEOUT = "2s"
_LOCK_NOT_AVAILABLE = "55P03"


async def waiting(conn: AsyncConnection, outbox: Table) -> int:
    """Messages in ``outbox`` not relayed yet (relayed ones stay until truncated)."""
    return int(
        await conn.scalar(
            select(_messages(outbox)).where(outbox.c.id > _position_of(relayed_table(outbox)))
        )
        or 0
    )


def _messages(outbox: Table) -> Any:
    """How many messages the selected rows hold."""
    return func.coalesce(func.sum(func.cardinality(outbox.c.topics)), 0)


def waiting_sql(schema: str) -> str:
    """:func:`waiting` as SQL text, for scripts on a plain connection."""
    return (
        f'SELECT coalesce(sum(cardinality(topics)), 0) FROM "{schema}".outbox WHERE id > '
        f'coalesce((SELECT relayed_to FROM "{schema}".outbox_relayed), 0)'
    )


def _position_of(relayed: Table) -> Any:
    """The relay's position as a scalar subquery: 0 before its first batch."""
    return func.coalesce(select(relayed.c.relayed_to).scalar_subquery(), 0)


def notify_channel(schema: str) -> str:
    return f"outbox_{schema}"


@dataclass(frozen=True)
class Along:
    """A caller's own write, run in the statement that writes the outbox row (one round trip
    for both): one or more data-modifying CTEs (``name AS (...)``, comma-separated, none
    named ``written``) whose only parameter is ``$1``, and the value of ``$1``. (A
    data-modifying WITH must be at a statement's top level, so the caller's are spelled out
    as CTEs rather than given as one nested statement.)"""

    sql: str
    param: Any


@dataclass
class Tx:
    """One unit of work: a database transaction plus the messages it will publish."""

    conn: AsyncConnection
    now: datetime
    source: str
    topic_prefix: str
    actor: str = "system"
    staged: list[dict[str, Any]] = field(default_factory=list)
    # subject (loan id) -> the span of the consumed message about it (set by the consumer),
    # so a message staged by a batch handler continues the trace of the one that caused it.
    causes: dict[str, Span] = field(default_factory=dict)
    # Where the staged messages are written (the outbox table and the schema whose relays
    # are woken), for a handler that writes its last change together with them
    # (``flush(tx, along=...)``); set by the consumer loop and the unit of work.
    outbox: Table | None = None
    schema: str = ""

    def publish(
        self,
        data: Message,
        *,
        event_id: str,
        subject: str,
        extensions: dict[str, str] | None = None,
    ) -> None:
        spec = SPEC_BY_MODEL[type(data)]
        attributes = {**tracing.inject(self.causes.get(subject)), **(extensions or {})}
        key, value, headers = encode_text_headers(
            Envelope(
                id=event_id,
                type=spec.ce_type,
                source=self.source,
                time=self.now,
                subject=subject,
                data=data,
                extensions=attributes,
            )
        )
        self.staged.append(
            {
                "topic": self.topic_prefix + spec.topic.value,
                "key": key,
                "value": value,
                "headers": headers,  # pairs: a JSON array of two-element arrays
            }
        )


async def flush(
    tx: Tx, outbox: Table | None = None, schema: str | None = None, *, along: Along | None = None
) -> int:
    """Write the staged messages as one row (a row per message was a third of the outbox's
    writes per loan, and the workflow's batches stage hundreds) and wake the relays, in one
    statement (the notification is delivered at commit). ``outbox`` and ``schema`` (given
    together) default to the transaction's own.

    ``along``: a write of the caller's that rides the same statement, run whether or not
    messages are staged (a notifier's cancellation: decisions and their outcomes in one
    round trip). Everything staged so far is written with it; what is staged later goes in
    the next flush's row, after it, so the order on the wire is kept.

    Plain SQL, prepared once per connection: no SQL expression built (and cache-keyed) per
    transaction."""
    if not tx.staged and along is None:
        return 0
    if outbox is None:
        outbox, schema = tx.outbox, tx.schema
    if outbox is None or not schema:
        raise ValueError("flush: this unit of work does not know its outbox")
    if not tx.staged:
        assert along is not None
        await tx.conn.exec_driver_sql(f"WITH {along.sql} SELECT 1", (along.param,))
        return 0
    staged = tx.staged
    row = (
        [m["topic"] for m in staged],
        [m["key"] for m in staged],
        [m["value"] for m in staged],
        orjson.dumps([m["headers"] for m in staged]).decode(),
        notify_channel(schema),
    )
    params = row if along is None else (along.param, *row)
    await tx.conn.exec_driver_sql(
        _flush_sql(_qualified(outbox), along.sql if along is not None else None), params
    )
    count = len(staged)
    tx.staged.clear()
    return count


@functools.lru_cache(maxsize=64)
def _flush_sql(table: str, along: str | None) -> str:
    """The outbox row written and the relays woken (after ``along``'s CTEs, which take
    ``$1``, if there are any)."""
    p = [f"${i}" for i in range(2 if along else 1, 7)]
    ctes = [along] if along else []
    # A data-modifying WITH runs to completion whether or not it is read.
    ctes.append(
        f"written AS (INSERT INTO {table} (topics, keys, payloads, header_sets) "
        f"VALUES ({p[0]}::text[], {p[1]}::bytea[], {p[2]}::bytea[], {p[3]}::text::jsonb))"
    )
    return f"WITH {', '.join(ctes)} SELECT pg_notify({p[4]}, '')"


def _qualified(table: Table) -> str:
    return f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'


class OutboxRelay(RunsOnAPollingWorker):
    """Publishes committed outbox rows in id order.

    One replica relays at a time (a transaction-scoped advisory lock), which keeps
    per-loan order on the wire; the others wait to be woken. Wake-ups come from
    ``pg_notify`` at commit, so there is no fixed sleep on the hot path; the timed wait is
    only a safety net should a notification be missed while the listener reconnects.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        database_url: str,
        producer: Any,
        outbox: Table,
        schema: str,
        *,
        batch: int = 2000,
        safety_poll_s: float = 2.0,
    ) -> None:
        self._engine = engine
        self._dsn = asyncpg_dsn(database_url)
        self._producer = producer
        self._outbox = outbox
        self._schema = schema
        self._batch = batch
        self._listener: asyncpg.Connection | None = None
        self._worker = PollingWorker(
            "outbox relay",
            self._relay_once,
            interval_s=safety_poll_s,
            on_stop=self._close_listener,
        )
        self._measured_at = 0.0
        self._relayed = relayed_table(outbox)
        self._qualified = _qualified(outbox)
        # The highest id known to be final (every lower one committed or rolled back), and
        # the gap the relay is stopped at, with when it was first seen.
        self._settled = 0
        self._gap: tuple[int, float] | None = None
        self._relayed_since_truncation = 0
        self._truncated_at = self._truncation_tried_at = time.monotonic()

    async def _relay_once(self) -> bool:
        """One round: listen (again, after a failure), then drain a batch; a full batch
        means more may be waiting."""
        try:
            if self._listener is None or self._listener.is_closed():
                self._listener = await asyncpg.connect(self._dsn)
                await self._listener.add_listener(
                    notify_channel(self._schema), lambda *_: self._worker.wake()
                )
            published = await self.drain_once()
            await self._measure_backlog()
        except Exception:
            await self._close_listener()  # a new one next round: it may be what failed
            raise
        return published >= self._batch

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def drain_once(self) -> int:
        """Publish the committed rows after the relay's position, up to the first gap (see
        the module's docstring); then truncate relayed rows if it is time to."""
        if self._gap is not None and time.monotonic() - self._gap[1] >= _GAP_PATIENCE_S:
            self._settled = max(self._settled, await self._settle())
        async with self._engine.begin() as conn:
            if not await self._lead(conn):
                return 0
            position = await self._position(conn)
            rows = await self._after(conn, position, self._batch)
            ready = self._unbroken(rows, position)
            published = sum(len(row.topics) for row in ready)
            if ready:
                await self._publish(ready)
                await self._advance(conn, ready[-1].id)
        if published:
            metrics.OUTBOX_PUBLISHED.labels(self._schema).inc(published)
            self._relayed_since_truncation += published
        if self._gap is not None:
            # Nothing may wake the relay when the gap's transaction rolled back: look again.
            asyncio.get_running_loop().call_later(_GAP_PATIENCE_S, self._worker.wake)
        elif self._truncation_due(drained=sum(len(row.topics) for row in rows) < self._batch):
            await self._truncate()
        return published

    async def _after(self, conn: AsyncConnection, position: int, messages: int) -> Sequence[Any]:
        """The rows after ``position`` in id order, as many as it takes to hold ``messages``
        (the last one may take it past)."""
        o = self._outbox
        size = func.cardinality(o.c.topics)
        rows = (
            select(o, (func.sum(size).over(order_by=o.c.id) - size).label("before"))
            .where(o.c.id > position)
            .order_by(o.c.id)
            .limit(messages)
            .subquery()
        )
        picked = select(*(rows.c[c.name] for c in o.columns)).where(rows.c.before < messages)
        return (await conn.execute(picked.order_by(rows.c.id))).all()

    async def _lead(self, conn: AsyncConnection) -> bool:
        """One replica relays at a time (for the rest of ``conn``'s transaction)."""
        return bool(
            await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                {"k": f"outbox-relay:{self._schema}"},
            )
        )

    async def _position(self, conn: AsyncConnection) -> int:
        return int(await conn.scalar(select(_position_of(self._relayed))) or 0)

    async def _advance(self, conn: AsyncConnection, to: int) -> None:
        upsert = insert(self._relayed).values(one=True, relayed_to=to)
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[self._relayed.c.one],
                set_={"relayed_to": func.greatest(self._relayed.c.relayed_to, to)},
            )
        )

    def _unbroken(self, rows: Sequence[Any], position: int) -> Sequence[Any]:
        """``rows`` up to the first id that may still appear before it: a gap above the
        highest id known to be final (``_settled``). Remembers the gap and since when."""
        expected = position + 1
        for i, row in enumerate(rows):
            if row.id != expected and row.id > self._settled + 1:
                gap = max(expected, self._settled + 1)
                if self._gap is None or self._gap[0] != gap:
                    self._gap = (gap, time.monotonic())
                return rows[:i]
            expected = row.id + 1
        self._gap = None
        return rows

    async def _settle(self) -> int:
        """The highest id below which nothing more can appear: once every transaction that
        has inserted into the outbox has ended (SHARE mode waits for exactly those), the
        highest id present. Holds writers back for about one commit."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{_SETTLE_LOCK_TIMEOUT}'"))
                await conn.execute(text(f"LOCK TABLE {self._qualified} IN SHARE MODE"))
                return int(await conn.scalar(select(func.max(self._outbox.c.id))) or 0)
        except DBAPIError as exc:
            if _LOCK_NOT_AVAILABLE not in sqlstates(exc):
                raise
            log.info("outbox %s: a writer held the table; the gap waits", self._schema)
            return self._settled

    def _truncation_due(self, *, drained: bool) -> bool:
        if self._relayed_since_truncation >= _TRUNCATE_AFTER_MESSAGES:
            return True
        return (
            drained
            and self._relayed_since_truncation > 0
            and time.monotonic() - self._truncated_at >= _TRUNCATE_AFTER_S
        )

    async def _truncate(self) -> None:
        if time.monotonic() - self._truncation_tried_at < _TRUNCATE_RETRY_S:
            return
        self._truncation_tried_at = time.monotonic()
        await self._truncate_now()

    async def _truncate_now(self) -> None:
        """Empty the table of relayed rows at once (TRUNCATE writes no row, where a DELETE
        writes each): under ACCESS EXCLUSIVE, so every row present is final; the few that
        came in since the last batch are published first. Gives up if the lock is not
        had quickly, or if too many rows wait: the next round tries again."""
        try:
            async with self._engine.begin() as conn:
                if not await self._lead(conn):
                    return
                await conn.execute(text(f"SET LOCAL lock_timeout = '{_TRUNCATE_LOCK_TIMEOUT}'"))
                await conn.execute(text(f"LOCK TABLE {self._qualified} IN ACCESS EXCLUSIVE MODE"))
                position = await self._position(conn)
                rows = await self._after(conn, position, _TRUNCATE_LEFTOVERS + 1)
                leftovers = sum(len(row.topics) for row in rows)
                if leftovers > _TRUNCATE_LEFTOVERS:
                    return  # writers are not held while a whole batch goes out
                if rows:
                    await self._publish(rows)
                    await self._advance(conn, rows[-1].id)
                    metrics.OUTBOX_PUBLISHED.labels(self._schema).inc(leftovers)
                await conn.execute(text(f"TRUNCATE {self._qualified}"))
        except DBAPIError as exc:
            if _LOCK_NOT_AVAILABLE not in sqlstates(exc):
                raise
            log.debug("outbox %s: busy; truncation later", self._schema)
            return
        self._relayed_since_truncation = 0
        self._truncated_at = time.monotonic()
        self._gap = None

    async def _publish(self, rows: Sequence[Any]) -> None:
        """Hand ``rows`` to the producer as one record batch per partition, in order, and
        wait until the broker has acknowledged them all.

        ``producer.send`` per row built a future and walked the accumulator for every
        message: 6% of the workflow's CPU in the pipeline; now there is one of each per
        partition. Each record goes to the partition ``send`` would have chosen
        (the default partitioner: murmur2 of the key, as the Java client), so a loan's
        messages keep one partition and, within it, the outbox's order: a partition's next
        batch is only started when the previous one is full, and the producer sends a
        partition's batches in the order they were handed over."""
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        filling: dict[tuple[str, int], Any] = {}
        futures = []
        messages = (
            (row.id, *message)
            for row in rows
            for message in zip(row.topics, row.keys, row.payloads, row.header_sets, strict=True)
        )
        for row_id, topic, key, value, headers in messages:
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = _PARTITIONER(key, known, known)
            record = {
                "timestamp": None,
                "key": key,
                "value": value,
                "headers": [(k, v.encode()) for k, v in headers],
            }
            batch = filling.get((topic, partition))
            if batch is not None and batch.append(**record) is not None:
                continue
            if batch is not None:  # full: away it goes, and a new one for this partition
                futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = filling[(topic, partition)] = producer.create_batch()
            # An empty batch takes any record (the broker judges its size, as with send);
            # if it ever did not, the drain fails and its rows stay, rather than one vanish.
            if batch.append(**record) is None:
                raise RuntimeError(f"an empty record batch refused outbox row {row_id}")
        for (topic, partition), batch in filling.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def _measure_backlog(self) -> None:
        """The outbox table as it is (every replica, at most once a second): how many
        messages wait and how old the oldest is. Two index-backed reads, the count capped
        (at that many transactions' messages)."""
        now = time.monotonic()
        if now - self._measured_at < _MEASURE_EVERY_S:
            return
        self._measured_at = now
        table = self._outbox
        after = table.c.id > _position_of(self._relayed)
        async with self._engine.connect() as conn:
            waiting = select(table.c.topics).where(after).limit(_COUNT_CAP).subquery()
            size = await conn.scalar(
                select(func.coalesce(func.sum(func.cardinality(waiting.c.topics)), 0))
            )
            oldest = await conn.scalar(
                select(table.c.created_at).where(after).order_by(table.c.id).limit(1)
            )
        self._observe_backlog(int(size or 0), oldest)

    def _observe_backlog(self, size: int, oldest: datetime | None) -> None:
        metrics.OUTBOX_BACKLOG.labels(self._schema).set(size)
        if oldest is None:
            metrics.OUTBOX_OLDEST_AGE.labels(self._schema).set(0)
        else:
            age = (datetime.now(oldest.tzinfo) - oldest).total_seconds()
            metrics.OUTBOX_OLDEST_AGE.labels(self._schema).set(max(age, 0.0))
