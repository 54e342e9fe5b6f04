"""The consumer loop: handle a polled batch in one transaction, then commit offsets.

Order of effects per poll:
1. claim the batch's event ids in the inbox (a duplicate is skipped, counted, not redone);
2. run the handlers, which change state and stage outgoing messages;
3. write the staged outbox rows; commit the database transaction;
4. only then commit the Kafka offsets.
A crash before 3 redoes everything; a crash between 3 and 4 redelivers the batch, and the
inbox turns the redelivery into a no-op.

A record that cannot be decoded or validated is dead-lettered (through the outbox, in the
same transaction) with its reason and origin, and the loop carries on. A handler that
raises is retried on its own with backoff and then dead-lettered; infrastructure failures
(database or broker unreachable) are retried without limit, since dead-lettering good
messages during an outage would lose them. Should even the dead letter fail, a bare one
(origin and reason only) is tried, and failing that the record is logged and counted; a
record the Kafka client cannot parse is found, dead-lettered by its position and stepped
over. No record stops the loop.

A poll's claims are one row of ``inbox_claims`` (the ids, their fingerprints and whether
each ended in a dead letter, as arrays, an id found through a GIN index that the lookup
always reads), not a row per message: the claims were a third of the rows a loan wrote.
Two replicas that claim the same id at once (a zombie after a rebalance, a publisher's
duplicate on another partition) are kept apart by a transaction-scoped advisory lock per
id, taken in sorted order before the claims are read, as the primary key of the
row-per-message inbox did. Claims from before ``inbox_claims`` (the ``inbox`` table) still count.

The inbox keeps a fingerprint of each claimed payload. An event id that comes again with
the same payload is a duplicate, counted and skipped; with another payload it is a
publisher's bug: the first effect stands and the record is dead-lettered as a
``conflicting_duplicate``. A claim that ended in a ``handler_failed`` dead letter had no
effect, so the next record with that id (a replay of the letter, original or corrected)
takes the claim over in its own transaction: replay needs no manual inbox delete.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalStateError,
    KafkaError,
)
from opentelemetry import trace
from opentelemetry.trace import Span
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit import metrics, tracing
from collections_kit.clock import Clock
from collections_kit.contract import SPEC_BY_MODEL, DeadLetter, Message
from collections_kit.db import database_unavailable
from collections_kit.envelope import (
    Encoding,
    Envelope,
    MalformedMessageError,
    decode,
    is_safe_text,
    printable_value,
)
from collections_kit.faults import crash_point
from collections_kit.kafka import client_kwargs
from collections_kit.outbox import Tx, flush
from collections_kit.settings import ServiceSettings

log = logging.getLogger(__name__)

# What a dead letter cuts, so that the DLQ stays publishable; a replay must not publish a
# cut record as if it were the original (deploy/ops/dlq_replay.py mirrors both, standalone).
DEAD_LETTER_HEADER_LIMIT = 1024
VALUE_TRUNCATED = "value truncated here"  # in the reason of an oversized record's letter

Handler = Callable[[Tx, Envelope], Awaitable[None]]

# Handles a whole polled batch at once (one read of state, one write per table).
BatchHandler = Callable[[Tx, Sequence[Envelope]], Awaitable[None]]

_LOCK_CLAIMS = text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(:consumer || chr(10) || id, 0))) "
    "FROM unnest(CAST(:ids AS text[])) AS id"
)


# The latest claim of each id (a batch row's, else the old inbox's), and one new row with
# the ids this transaction claims: those never claimed, and those whose latest claim ended
# in a handler_failed letter. The batch rows are read by ``inbox_claims_of``, a function
# that keeps the GIN index in use (migration_ops.add_inbox_claims_lookup_v1 says why).
_CLAIM = """
    WITH req AS (
        SELECT r.event_id, r.fp, r.dl
        FROM unnest(CAST(:ids AS text[]), CAST(:fps AS bytea[]), CAST(:dls AS boolean[]))
             AS r(event_id, fp, dl)),
    earlier AS (
        SELECT DISTINCT ON (event_id) event_id, fingerprint, dead_lettered FROM (
            SELECT c.event_id, c.fingerprint, c.dead_lettered, c.seq
            FROM "{schema}".inbox_claims_of(:consumer, CAST(:ids AS text[])) c
            UNION ALL
            SELECT i.event_id, i.fingerprint, i.dead_lettered, 0
            FROM "{schema}".inbox i
            WHERE i.consumer = :consumer AND i.event_id = ANY(CAST(:ids AS text[]))
        ) claims
        ORDER BY event_id, seq DESC),
    claimed AS (
        INSERT INTO "{schema}".inbox_claims (consumer, event_ids, fingerprints, dead_lettered)
        SELECT :consumer, array_agg(req.event_id), array_agg(req.fp), array_agg(req.dl)
        FROM req LEFT JOIN earlier e ON e.event_id = req.event_id
        WHERE e.event_id IS NULL OR e.dead_lettered
        HAVING count(*) > 0)
    SELECT event_id, fingerprint, dead_lettered FROM earlier
    """


@dataclass(frozen=True)
class _Item:
    record: ConsumerRecord[bytes, bytes]
    event_id: str
    envelope: Envelope | None
    error: MalformedMessageError | None
    # Of the payload claimed under event_id (decoded records only): tells a conflicting
    # duplicate from a redelivery.
    fingerprint: bytes | None = None


def claims_sql(schema: str) -> str:
    """The event ids a consumer (``$1``) has claimed in ``schema``, as SQL text for a plain
    connection: one row each, from the poll rows and the older row-per-claim inbox."""
    return (
        f'SELECT unnest(event_ids) AS event_id FROM "{schema}".inbox_claims '
        f"WHERE consumer = $1 UNION "
        f'SELECT event_id FROM "{schema}".inbox WHERE consumer = $1'
    )


def _failed(item: _Item) -> bool:
    """Whether ``item`` is the dead letter of a handler that failed on it (a claim a
    replay of the letter may take over)."""
    return item.error is not None and item.error.kind == "handler_failed"


def _fingerprint(ce_type: str, value: bytes) -> bytes:
    # The record's own bytes (not a re-serialisation): a redelivery or a replay of the
    # original carries them unchanged. The type is NUL-free (checked on decode).
    return hashlib.blake2b(ce_type.encode() + b"\0" + value, digest_size=16).digest()


@dataclass(frozen=True)
class _BareRecord:
    """A record's origin without its content: what a dead letter keeps when the record's
    key, headers or value made even a dead letter fail."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class _UnreadableRecord(_BareRecord):
    """A record the Kafka client itself cannot parse (a header name that is not UTF-8,
    say): it raises on every poll that reaches it, so the loop reads around it."""

    reason: str = ""


def dead_letter_of(
    record: Any, error: MalformedMessageError, *, group: str, now: datetime, max_value_chars: int
) -> tuple[DeadLetter, str]:
    """The dead letter of ``record`` and the subject to publish it under.

    Whatever the record holds, the letter is storable and publishable: key, headers and
    value travel inside the letter's JSON (as text when UTF-8, else base64, saying which),
    so that :func:`original_record` gives back their exact bytes for a replay; only an
    identifier fit for a header and a log line becomes the letter's subject."""
    value, value_encoding = printable_value(record.value)
    headers: dict[str, str] = {}
    header_encodings: dict[str, Encoding] = {}
    for name, raw in record.headers or ():
        text, encoding = printable_value(raw)
        headers[str(name)] = text[:DEAD_LETTER_HEADER_LIMIT]
        header_encodings.pop(str(name), None)  # the last value of a name is kept
        if encoding == "base64":
            header_encodings[str(name)] = "base64"
    key: str | None = None
    key_encoding: Encoding = "utf-8"
    if record.key is not None:
        key, key_encoding = printable_value(record.key)
    subject = key if key is not None and key_encoding == "utf-8" and is_safe_text(key) else ""
    letter = DeadLetter(
        reason=error.reason,
        error_kind=error.kind,
        consumer_group=group,
        origin_topic=record.topic,
        origin_partition=record.partition,
        origin_offset=record.offset,
        origin_key=key,
        key_encoding=key_encoding,
        origin_headers=headers,
        origin_header_encodings=header_encodings,
        origin_value=value[:max_value_chars],  # the DLQ must stay publishable
        value_encoding=value_encoding,
        failed_at=now,
    )
    return letter, subject


def _bytes_of(text: str, encoding: str) -> bytes:
    return base64.b64decode(text) if encoding == "base64" else text.encode()


def original_record(letter: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the record a letter was made of, byte for byte (one
    value per header name; a header or value cut in the letter is not the original)."""
    key = None if letter.origin_key is None else _bytes_of(letter.origin_key, letter.key_encoding)
    headers = [
        (name, _bytes_of(text, letter.origin_header_encodings.get(name, "utf-8")))
        for name, text in letter.origin_headers.items()
    ]
    return key, _bytes_of(letter.origin_value, letter.value_encoding), headers


def _record_size(record: Any) -> int:
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers or ():  # a loop: cheaper than sum() over a generator
        size += len(name) + len(value or b"")
    return size


def _is_infrastructure(exc: BaseException) -> bool:
    return database_unavailable(exc) or isinstance(exc, ConnectionError | OSError | KafkaError)


class ConsumerLoop:
    def __init__(
        self,
        *,
        settings: ServiceSettings,
        engine: AsyncEngine,
        inbox: Table,
        outbox: Table,
        topics: Sequence[str],
        handlers: dict[type[Message], Handler],
        clock: Clock,
        on_committed: Callable[[], None] | None = None,
        batch_handler: BatchHandler | None = None,
        lane: str = "",
        applied_first: tuple[type[Message], ...] = (),
        admit: Callable[[Message], str | None] | None = None,
        fetch_min_bytes: int | None = None,
        fetch_max_wait_ms: int | None = None,
    ) -> None:
        self._settings = settings
        # How long the broker may hold this loop's fetches (default: the service's
        # settings): a loop whose records are urgent answers at once while its service's
        # other loops let records gather (the notifier's repayments).
        self._fetch_min_bytes = fetch_min_bytes or settings.fetch_min_bytes
        self._fetch_max_wait_ms = (
            settings.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms
        )
        # The service's own judgement of a well-formed message: a reason to refuse it as
        # invalid (a jurisdiction it has no policy for), or None.
        self._admit = admit
        # Message types a poll applies before the rest (see ``_handle_poll``).
        self._applied_first = applied_first
        self._engine = engine
        self._inbox = inbox
        self._outbox = outbox
        self._schema = settings.db_schema
        self._claim_sql = text(_CLAIM.format(schema=self._schema))
        self._topics = [settings.topic_prefix + t for t in topics]
        self._handlers = handlers
        self._clock = clock
        self._group = settings.group_id()
        self._on_committed = on_committed
        self._batch_handler = batch_handler
        # A service may run more than one loop in its group, each on its own topics, so
        # that one topic's records never wait behind another's (the notifier's repayments
        # stop contact). Members of one group may subscribe to different topics; the lane
        # tells their clients apart on the broker and in the logs.
        self._client_id = f"{self._group}-{lane}-consumer" if lane else f"{self._group}-consumer"
        self.heartbeat = time.monotonic()
        self.assigned: set[TopicPartition] = set()

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self._topics,
            **client_kwargs(self._settings),
            group_id=self._group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.max_batch,
            fetch_min_bytes=self._fetch_min_bytes,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            # Bounded so a poison flood cannot exhaust memory.
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=2 * 1024 * 1024,
        )

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer()
        await consumer.start()
        # The offsets of a handled batch travel to the broker while the next one is
        # fetched and handled (a broker round trip per batch off the critical path). One
        # commit is in flight at a time, so they land in order; a crash before it lands
        # means redelivery, which the inbox makes harmless.
        committing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                try:
                    batches = await consumer.getmany(
                        timeout_ms=500, max_records=self._settings.max_batch
                    )
                except (CorruptRecordException, ValueError) as exc:  # UnicodeDecodeError too
                    batches = await self._read_around_unreadable(consumer, exc)
                self.assigned = set(consumer.assignment())
                if not batches:
                    await self._observe_idle_lag(consumer)
                    continue
                started = time.perf_counter()
                await self._handle_poll(batches)
                crash_point("after_db_commit")
                # A rebalance during the batch may have moved partitions away: their new
                # owner redelivers those records, and the inbox makes that harmless.
                assigned = consumer.assignment()
                offsets = {
                    tp: records[-1].offset + 1 for tp, records in batches.items() if tp in assigned
                }
                if committing is not None:
                    await committing
                committing = (
                    asyncio.create_task(self._commit(consumer, offsets)) if offsets else None
                )
                metrics.BATCH_SECONDS.labels(self._group).observe(time.perf_counter() - started)
                self._observe_lag(consumer, offsets)
                if self._on_committed is not None:
                    self._on_committed()
        finally:
            if committing is not None:
                with contextlib.suppress(Exception):
                    await committing
            await consumer.stop()

    async def _read_around_unreadable(
        self, consumer: AIOKafkaConsumer, exc: Exception
    ) -> dict[TopicPartition, list[Any]]:
        """The poll's records up to the one the client cannot parse, and that one as an
        unreadable record to dead-letter; the consumer then goes on after it. The client
        does not say which record failed: a probe of our own finds it (no group, nothing
        committed), reading one record at a time, which parses no further than asked."""
        found = await self._find_unreadable(consumer)
        if found is None:  # not reproducible: poll again, the normal way
            log.warning("poll failed (%s) and no unreadable record was found", type(exc).__name__)
            await asyncio.sleep(self._settings.retry_backoff_s)
            return {}
        tp, bad = found
        records: list[Any] = []
        while (position := await consumer.position(tp)) < bad:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=bad - position)
            records.extend(batch.get(tp, []))
        reason = (
            "record could not be read by the Kafka client (it, or an earlier record "
            f"of its producer batch, is malformed): {type(exc).__name__}: {exc}"
        )[:500]
        records.append(_UnreadableRecord(tp.topic, tp.partition, bad, reason=reason))
        consumer.seek(tp, bad + 1)
        return {tp: records}

    async def _find_unreadable(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[TopicPartition, int] | None:
        probe = AIOKafkaConsumer(
            **client_kwargs(self._settings),
            group_id=None,
            enable_auto_commit=False,
            client_id=f"{self._client_id}-probe",
        )
        await probe.start()
        try:
            for tp in sorted(consumer.assignment()):
                offset = await consumer.position(tp)
                end = (await probe.end_offsets([tp]))[tp]
                probe.assign([tp])
                probe.seek(tp, offset)
                deadline = time.monotonic() + 30.0  # bounded: the loop must go on
                while offset < end and time.monotonic() < deadline:
                    try:
                        batch = await probe.getmany(tp, timeout_ms=1000, max_records=1)
                    except (CorruptRecordException, ValueError):
                        return tp, offset
                    records = batch.get(tp, [])
                    # Past control batches too, which yield no record.
                    offset = records[-1].offset + 1 if records else await probe.position(tp)
            return None
        finally:
            await probe.stop()

    @staticmethod
    async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError):
            # Partitions moved to another replica mid-batch: it will redeliver them, and
            # the inbox makes that harmless.
            log.warning("offset commit failed after a rebalance; batch will be redelivered")

    def _observe_lag(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        for tp, position in offsets.items():
            end = consumer.highwater(tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(
                    max(end - position, 0)
                )

    async def _observe_idle_lag(self, consumer: AIOKafkaConsumer) -> None:
        # An idle poll still refreshes the lag (a partition that never had a batch, or one
        # whose last value is stale); positions are known locally, no broker round trip.
        positions: dict[TopicPartition, int] = {}
        for tp in self.assigned:
            with contextlib.suppress(IllegalStateError, KafkaError):
                positions[tp] = await consumer.position(tp)
        self._observe_lag(consumer, positions)

    async def _handle_poll(self, batches: dict[TopicPartition, list[Any]]) -> None:
        items = []
        for tp, records in batches.items():
            ignored = 0
            for record in records:
                item = self._decode(record)
                if item.envelope is None and item.error is None:
                    # A contract message this service has no use for (for the notifier, most
                    # of the case topic): nothing to do, so nothing to claim or commit. Its
                    # offset is committed with the poll's; a redelivery is skipped again.
                    ignored += 1
                else:
                    items.append(item)
            if ignored:
                metrics.MESSAGES_CONSUMED.labels(self._group, tp.topic, "ignored").inc(ignored)
        if items and self._applied_first:
            # Records of different topics carry no order between them on Kafka, so a
            # service may say which kinds of news a poll applies first (ledger-sync: the
            # money facts, before the balance checks that must see them). A stable sort:
            # each topic keeps its own order, and so does a batch isolated record by record
            # after a failure.
            items.sort(key=self._applied_later)
        if items:
            await self._handle_items(items)

    def _applied_later(self, item: _Item) -> bool:
        return not (
            item.envelope is not None and isinstance(item.envelope.data, self._applied_first)
        )

    async def _handle_items(self, items: list[_Item]) -> None:
        backoff = self._settings.retry_backoff_s
        while True:
            try:
                await self._in_one_transaction(items)
                return
            except Exception as exc:
                if _is_infrastructure(exc):
                    log.warning(
                        "infrastructure unavailable (%s); retrying batch in %.1fs",
                        type(exc).__name__,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(max(backoff, 0.1) * 2, 10.0)
                    continue
                if len(items) == 1:
                    await self._retry_then_dead_letter(items[0], exc)
                    return
                # One bad record must not hold back its neighbours: isolate it.
                for item in items:
                    await self._handle_poll_single(item)
                return

    async def _handle_poll_single(self, item: _Item) -> None:
        backoff = self._settings.retry_backoff_s
        while True:
            try:
                await self._in_one_transaction([item])
                return
            except Exception as exc:
                if _is_infrastructure(exc):
                    await asyncio.sleep(backoff)
                    backoff = min(max(backoff, 0.1) * 2, 10.0)
                    continue
                await self._retry_then_dead_letter(item, exc)
                return

    async def _retry_then_dead_letter(self, item: _Item, first: Exception) -> None:
        error: Exception = first
        for attempt in range(2, self._settings.max_attempts + 1):
            await asyncio.sleep(self._settings.retry_backoff_s * 2 ** (attempt - 2))
            try:
                await self._in_one_transaction([item])
                return
            except Exception as exc:
                error = exc
        log.error(
            "failed %d times on %s@%s/%d; dead-lettering",
            self._settings.max_attempts,
            item.record.topic,
            item.record.partition,
            item.record.offset,
            exc_info=error,
        )
        reason = f"{type(error).__name__}: {error}"[:500]
        cause = item.error  # set when what failed was the record's own dead letter
        if cause is None:
            cause = MalformedMessageError("handler_failed", reason)
            failure = await self._dead_letter_until_stored(
                _Item(item.record, item.event_id, None, cause, item.fingerprint)
            )
            if failure is None:
                return
            error = failure
        # The letter itself failed (a record no letter can be made of): one that keeps only
        # the origin and the reason, claimed by origin, still tells the lender.
        record = item.record
        bare = _Item(
            _BareRecord(record.topic, record.partition, record.offset),
            f"{record.topic}/{record.partition}/{record.offset}",
            None,
            MalformedMessageError(
                cause.kind,
                (
                    f"{cause.reason} (the record could not be kept in this letter: "
                    f"{type(error).__name__})"
                )[:1000],
            ),
        )
        if await self._dead_letter_until_stored(bare) is None:
            return
        # Nothing more to try: the loop must go on, so the record is skipped, visibly.
        metrics.DEAD_LETTER_FAILURES.labels(self._group).inc()
        log.error(
            "could not dead-letter %s/%d@%d; skipped", record.topic, record.partition, record.offset
        )

    async def _dead_letter_until_stored(self, item: _Item) -> Exception | None:
        """Stores ``item``'s letter, waiting out infrastructure failures; the error if the
        letter itself fails."""
        while True:
            try:
                await self._in_one_transaction([item])
                return None
            except Exception as exc:
                if not _is_infrastructure(exc):
                    log.error(
                        "dead-lettering %s/%d@%d failed",
                        item.record.topic,
                        item.record.partition,
                        item.record.offset,
                        exc_info=exc,
                    )
                    return exc
                await asyncio.sleep(1.0)

    def _decode(self, record: Any) -> _Item:
        origin_id = f"{record.topic}/{record.partition}/{record.offset}"
        if isinstance(record, _UnreadableRecord):
            return _Item(
                record, origin_id, None, MalformedMessageError("undecodable", record.reason)
            )
        size = _record_size(record)
        if size > self._settings.max_record_bytes:
            return _Item(
                record,
                origin_id,
                None,
                MalformedMessageError(
                    "invalid",
                    f"record of {size} bytes exceeds the limit of "
                    f"{self._settings.max_record_bytes} ({VALUE_TRUNCATED})",
                ),
            )
        try:
            envelope = decode(record.key, record.value, record.headers)
        except MalformedMessageError as exc:
            return _Item(record, origin_id, None, exc)
        except Exception as exc:  # hostile input must never stop the loop
            return _Item(
                record,
                origin_id,
                None,
                MalformedMessageError("undecodable", f"{type(exc).__name__}"),
            )
        if type(envelope.data) not in self._handlers:
            spec = SPEC_BY_MODEL[type(envelope.data)]
            if self._settings.topic_prefix + spec.topic.value == record.topic:
                # A contract message this service has no use for: skipped, unclaimed.
                return _Item(record, envelope.id, None, None)
            return _Item(
                record,
                origin_id,
                None,
                MalformedMessageError(
                    "unknown_type", f"{envelope.type} does not belong on {record.topic}"
                ),
            )
        refused = self._admit(envelope.data) if self._admit else None
        if refused is not None:
            return _Item(record, origin_id, None, MalformedMessageError("invalid", refused))
        return _Item(
            record, envelope.id, envelope, None, _fingerprint(envelope.type, record.value or b"")
        )

    async def _in_one_transaction(self, items: Sequence[_Item]) -> None:
        spans: list[Span] = []
        try:
            await self._transaction(items, spans)
        except BaseException as exc:
            tracing.end(spans, exc)
            raise
        # Ended once committed: a span's duration covers the whole unit of work.
        tracing.end(spans)

    def _span(self, tx: Tx, item: _Item, envelope: Envelope, spans: list[Span]) -> Span:
        record = item.record
        span = tracing.start_consume(
            record.topic,
            record.partition,
            record.offset,
            envelope.id,
            envelope.type,
            self._group,
            envelope.extensions,
        )
        spans.append(span)
        tx.causes[envelope.subject] = span
        return span

    async def _transaction(self, items: Sequence[_Item], spans: list[Span]) -> None:
        # Counted once committed, per topic and outcome (a labelled counter per message was
        # a measurable share of the loop).
        outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        async with self._engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=self._clock.now(),
                source=self._settings.service_name,
                topic_prefix=self._settings.topic_prefix,
                outbox=self._outbox,
                schema=self._schema,
            )
            fresh, claimed = await self._claim(tx, items)
            batch: list[Envelope] = []
            for item in items:
                if item.event_id not in fresh:
                    first = claimed.get(item.event_id)
                    if (
                        item.error is None
                        and first is not None
                        and item.fingerprint is not None
                        and first != item.fingerprint
                    ):
                        self._dead_letter(
                            tx,
                            item.record,
                            MalformedMessageError(
                                "conflicting_duplicate",
                                f"event id {item.event_id!r} was already processed with another "
                                "payload: the first one's effect stands, this one had none",
                            ),
                        )
                        outcomes[item.record.topic, "conflicting_duplicate"] += 1
                    else:
                        outcomes[item.record.topic, "duplicate"] += 1
                    continue
                # A second copy in the same batch is a duplicate of this one.
                fresh.discard(item.event_id)
                claimed[item.event_id] = item.fingerprint
                if item.error is not None:
                    self._dead_letter(tx, item.record, item.error)
                    continue
                assert item.envelope is not None  # ignored messages never get here
                span = self._span(tx, item, item.envelope, spans)
                if self._batch_handler is not None:
                    batch.append(item.envelope)
                else:
                    with trace.use_span(span, end_on_exit=False):
                        await self._handlers[type(item.envelope.data)](tx, item.envelope)
                outcomes[item.record.topic, "handled"] += 1
            if batch:
                assert self._batch_handler is not None
                await self._batch_handler(tx, batch)
            await flush(tx)
        for (topic, outcome), n in outcomes.items():
            metrics.MESSAGES_CONSUMED.labels(self._group, topic, outcome).inc(n)

    async def _claim(
        self, tx: Tx, items: Sequence[_Item]
    ) -> tuple[set[str], dict[str, bytes | None]]:
        """Claims the items' event ids; returns those this transaction may act on (new ones,
        and those whose claim ended in a handler_failed letter: taken over, see above), and
        the fingerprint each other one was claimed with."""
        first: dict[str, _Item] = {}
        for item in items:
            first.setdefault(item.event_id, item)
        ids = sorted(first)  # every claimer locks in this order: no deadlock between them
        # Array parameters: the statements are prepared once, whatever the batch size. The
        # locks first, in a statement of their own: the claims are read by the next one,
        # whose snapshot then includes what the transactions waited for committed.
        await tx.conn.execute(_LOCK_CLAIMS, {"consumer": self._group, "ids": ids})
        rows = await tx.conn.execute(
            self._claim_sql,
            {
                "consumer": self._group,
                "ids": ids,
                "fps": [first[i].fingerprint for i in ids],
                "dls": [_failed(first[i]) for i in ids],
            },
        )
        earlier = {row.event_id: (row.fingerprint, row.dead_lettered) for row in rows}
        fresh = {i for i in ids if i not in earlier or earlier[i][1]}
        return fresh, {i: fp for i, (fp, _) in earlier.items() if i not in fresh}

    def _dead_letter(self, tx: Tx, record: Any, error: MalformedMessageError) -> None:
        letter, subject = dead_letter_of(
            record,
            error,
            group=self._group,
            now=tx.now,
            max_value_chars=self._settings.max_record_bytes,
        )
        tx.publish(
            letter,
            event_id=f"dlq:{self._group}:{record.topic}/{record.partition}/{record.offset}",
            subject=subject,
        )
        metrics.DEAD_LETTERS.labels(self._group, error.kind).inc()
        log.warning(
            "dead-lettered %s/%d@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            error.reason,
        )
