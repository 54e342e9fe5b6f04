"""The transactional outbox and its relay.

Handlers never produce to Kafka. They stage messages in the ``outbox`` table inside the
same transaction as their state change; the relay publishes committed rows with an
idempotent producer and deletes them. A crash at any point leaves either nothing or a row
that will be (re)published: at-least-once on the wire, made exactly-once in effect by the
consumers' inbox, because every message keeps its ``ce_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry.trace import Span
from sqlalchemy import Table, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from collections_kit import metrics, tracing
from collections_kit.contract import SPEC_BY_MODEL, Message
from collections_kit.db import any_of, asyncpg_dsn, insert_rows
from collections_kit.envelope import Envelope, encode_text_headers
from collections_kit.worker import PollingWorker

log = logging.getLogger(__name__)
# The backlog gauges are refreshed at most this often; the count stops at the cap.
_MEASURE_EVERY_S = 1.0
_COUNT_CAP = 100_000
# The producer's own default: records of one key (one loan) always share a partition.
_PARTITIONER = DefaultPartitioner()


def notify_channel(schema: str) -> str:
    return f"outbox_{schema}"


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


async def flush(tx: Tx, outbox: Table, schema: str) -> int:
    """Write staged messages in one statement and wake the relays (delivered on commit)."""
    if not tx.staged:
        return 0
    await insert_rows(tx.conn, outbox, tx.staged, notify=notify_channel(schema))
    count = len(tx.staged)
    tx.staged.clear()
    return count


class OutboxRelay:
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

    @property
    def heartbeat(self) -> float:
        return self._worker.heartbeat

    def wake(self) -> None:
        self._worker.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._worker.run(stop)

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
        async with self._engine.begin() as conn:
            got = await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                {"k": f"outbox-relay:{self._schema}"},
            )
            if not got:
                return 0
            rows: Sequence[Any] = (
                await conn.execute(
                    select(self._outbox).order_by(self._outbox.c.id).limit(self._batch)
                )
            ).all()
            if not rows:
                return 0
            await self._publish(rows)
            # Exactly the rows read: a transaction that commits a lower id later must not lose it.
            await conn.execute(
                delete(self._outbox).where(any_of(self._outbox.c.id, [row.id for row in rows]))
            )
            metrics.OUTBOX_PUBLISHED.labels(self._schema).inc(len(rows))
            return len(rows)

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
        for row in rows:
            known = partitions.get(row.topic)
            if known is None:
                known = partitions[row.topic] = sorted(await producer.partitions_for(row.topic))
            partition = _PARTITIONER(row.key, known, known)
            record = {
                "timestamp": None,
                "key": row.key,
                "value": row.value,
                "headers": [(k, v.encode()) for k, v in row.headers],
            }
            batch = filling.get((row.topic, partition))
            if batch is not None and batch.append(**record) is not None:
                continue
            if batch is not None:  # full: away it goes, and a new one for this partition
                futures.append(await producer.send_batch(batch, row.topic, partition=partition))
            batch = filling[(row.topic, partition)] = producer.create_batch()
            # An empty batch takes any record (the broker judges its size, as with send);
            # if it ever did not, the drain fails and its rows stay, rather than one vanish.
            if batch.append(**record) is None:
                raise RuntimeError(f"an empty record batch refused outbox row {row.id}")
        for (topic, partition), batch in filling.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def _measure_backlog(self) -> None:
        """The outbox table as it is (every replica, at most once a second): how many rows
        wait and how old the oldest is. Two index-backed reads, the count capped."""
        now = time.monotonic()
        if now - self._measured_at < _MEASURE_EVERY_S:
            return
        self._measured_at = now
        table = self._outbox
        async with self._engine.connect() as conn:
            size = await conn.scalar(
                select(func.count()).select_from(select(table.c.id).limit(_COUNT_CAP).subquery())
            )
            oldest = await conn.scalar(select(table.c.created_at).order_by(table.c.id).limit(1))
        self._observe_backlog(int(size or 0), oldest)

    def _observe_backlog(self, size: int, oldest: datetime | None) -> None:
        metrics.OUTBOX_BACKLOG.labels(self._schema).set(size)
        if oldest is None:
            metrics.OUTBOX_OLDEST_AGE.labels(self._schema).set(0)
        else:
            age = (datetime.now(oldest.tzinfo) - oldest).total_seconds()
            metrics.OUTBOX_OLDEST_AGE.labels(self._schema).set(max(age, 0.0))
