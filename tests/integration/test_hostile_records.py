"""Hostile Kafka input: hypothesis-generated garbage on every topic the workflow consumes
(random bytes, broken or oversized headers, wrong types, records over the size limit...),
each batch followed by a good message. Every piece of garbage must end on the DLQ with a
reason and its origin, and the good message must still be processed: the consumer keeps
consuming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from collections_kit import contract as c
from collections_kit.envelope import Envelope
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, read_topic, running
from workflow.adapters.tables import cases
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

LIMIT = 16 * 1024
TOPICS = [t.value for t in workflow_boot.CONSUMED]
GOOD = lending.overdue("L-template", Decimal("100.00"))
TYPES = ["loan.overdue.v1", "loan.repayment.received.v1", "collections.balance.confirmed.v1",
         "collections.contact.outcome.v1", "loan.nonsense.v9", ""]


@dataclass(frozen=True)
class Garbage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _ce_headers(ce_type: str, /, **override: bytes | None) -> list[tuple[str, bytes]]:
    base: dict[str, bytes | None] = {
        "ce_specversion": b"1.0", "ce_id": b"x", "ce_source": b"hostile",
        "ce_type": ce_type.encode(), "ce_time": datetime.now(UTC).isoformat().encode(),
        "ce_subject": b"L-1", "content-type": b"application/json"}
    base.update(override)
    return [(k, v) for k, v in base.items() if v is not None]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@st.composite
def garbage(draw: st.DrawFn) -> Garbage:
    topic = draw(st.sampled_from(TOPICS))
    kind = draw(st.sampled_from(["bytes", "no_headers", "bad_header", "wrong_types",
                                 "huge", "key_mismatch", "deep_json", "not_json"]))
    good = json.loads(GOOD.model_dump_json())
    if kind == "bytes":  # anything at all
        key = draw(st.none() | st.binary(max_size=64))
        value = draw(st.binary(max_size=512) if key is None
                     else st.none() | st.binary(max_size=512))
        return Garbage(topic, key, value,
                       draw(st.lists(st.tuples(st.text(min_size=1, max_size=12),
                                               st.binary(max_size=64)), max_size=5)))
    if kind == "no_headers":
        missing = draw(st.sampled_from(["ce_specversion", "ce_id", "ce_source", "ce_type"]))
        return Garbage(topic, b"L-1", json.dumps(good).encode(),
                       _ce_headers("loan.overdue.v1", **{missing: None}))
    if kind == "bad_header":  # not UTF-8, oversized, wrong version or content type
        which = draw(st.sampled_from(["utf8", "size", "version", "content", "time"]))
        override: dict[str, bytes] = {
            "utf8": {"ce_id": b"\xff\xfe" + draw(st.binary(max_size=8))},
            "size": {"ce_source": b"s" * 5000},
            "version": {"ce_specversion": draw(st.sampled_from([b"0.3", b"2.0", b""]))},
            "content": {"content-type": b"application/xml"},
            "time": {"ce_time": draw(st.sampled_from([b"yesterday", b"2026-11-22T10:00:00",
                                                      b""]))},
        }[which]
        return Garbage(Topic.LOANS_OVERDUE.value, b"L-template", json.dumps(good).encode(),
                       _ce_headers("loan.overdue.v1", **override))
    if kind == "wrong_types":  # a real event type, fields of the wrong type or missing
        field = draw(st.sampled_from(sorted(good)))
        good[field] = draw(json_values.filter(lambda v: not isinstance(v, str)))
        ce_type = draw(st.sampled_from(TYPES))
        return Garbage(topic, b"L-template", json.dumps(good).encode(), _ce_headers(ce_type))
    if kind == "huge":  # over the record size limit
        size = draw(st.integers(LIMIT + 1, 3 * LIMIT))
        return Garbage(topic, b"L-1", b"{" + b" " * size + b"}", _ce_headers("loan.overdue.v1"))
    if kind == "key_mismatch":
        return Garbage(Topic.LOANS_OVERDUE.value, b"L-other", json.dumps(good).encode(),
                       _ce_headers("loan.overdue.v1"))
    if kind == "deep_json":  # nesting that would blow a recursive parser
        depth = draw(st.integers(2_000, 50_000))
        return Garbage(topic, b"L-1", b"[" * depth + b"]" * depth,
                       _ce_headers("loan.overdue.v1"))
    return Garbage(topic, b"L-1", draw(st.text(min_size=1, max_size=200)).encode() + b"{",
                   _ce_headers(draw(st.sampled_from(TYPES))))


@dataclass
class World:
    runtime: Runtime
    kafka: AIOKafkaProducer
    prefix: str
    bootstrap: str
    round: int = 0


@pytest.fixture
async def world(stack: dict[str, str], database_url: str,
                topic_prefix: str) -> AsyncIterator[World]:
    config = WorkflowSettings.model_validate({
        "database_url": database_url, "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix, "max_record_bytes": LIMIT, "max_attempts": 2,
        "retry_backoff_s": 0.05})
    await migrate(workflow_boot.MIGRATIONS, database_url, config.db_schema)
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        async with running(workflow_boot.build_runtime(config)) as runtime:
            yield World(runtime, kafka, topic_prefix, stack["kafka_bootstrap"])
    finally:
        await kafka.stop()


@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(garbage(), min_size=1, max_size=12))
async def test_garbage_is_dead_lettered_and_the_consumer_keeps_consuming(
        world: World, batch: list[Garbage]) -> None:
    world.round += 1
    origins = set()
    for g in batch:
        meta = await world.kafka.send_and_wait(world.prefix + g.topic, value=g.value,
                                               key=g.key, headers=g.headers)
        origins.add((meta.topic, meta.partition, meta.offset))
    loan = f"L-good-{world.round}"
    await lending.Lender(world.kafka, world.prefix).publish(
        lending.overdue(loan, Decimal("100.00")))

    async def good_processed() -> bool:
        async with world.runtime.engine.connect() as conn:
            return (await conn.scalar(select(cases.c.case_id)
                                      .where(cases.c.loan_id == loan))) is not None
    await eventually(good_processed, within=60)

    async def dead_lettered() -> dict[Any, c.DeadLetter] | None:
        letters = {}
        for e in await read_topic(world.bootstrap, world.prefix + Topic.DLQ.value):
            if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter):
                d = e.data
                letters[(d.origin_topic, d.origin_partition, d.origin_offset)] = d
        return letters if origins <= set(letters) else None
    letters = await eventually(dead_lettered, within=60)
    for origin in origins:
        letter = letters[origin]
        assert letter.reason and letter.consumer_group
        assert len(letter.origin_value) <= LIMIT
    assert world.runtime.live()
