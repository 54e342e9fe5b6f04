"""Hostile Kafka input: hypothesis-generated garbage on every topic the workflow consumes
(random bytes, broken or oversized headers, wrong types, records over the size limit...),
each batch followed by a good message. Every piece of garbage must end on the DLQ with a
reason and its origin, and the good message must still be processed: the consumer keeps
consuming."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import select, text

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.consumer import original_record
from collections_kit.envelope import Envelope
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from scripts import lending
from scripts.deploy_check import ROOT
from scripts.infra import producer
from tests.support import eventually, migrate, read_topic, running
from workflow.adapters.tables import cases
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

LIMIT = 16 * 1024
TOPICS = [t.value for t in workflow_boot.CONSUMED]
GOOD = lending.overdue("L-template", Decimal("100.00"))
ADMIN = dev_headers(["admin"], subject="ops-test")
TYPES = [
    "loan.overdue.v1",
    "loan.repayment.received.v1",
    "collections.balance.confirmed.v1",
    "collections.contact.outcome.v1",
    "loan.nonsense.v9",
    "",
]


@dataclass(frozen=True)
class Garbage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _ce_headers(ce_type: str, /, **override: bytes | None) -> list[tuple[str, bytes]]:
    base: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"x",
        "ce_source": b"hostile",
        "ce_type": ce_type.encode(),
        "ce_time": datetime.now(UTC).isoformat().encode(),
        "ce_subject": b"L-1",
        "content-type": b"application/json",
    }
    base.update(override)
    return [(k, v) for k, v in base.items() if v is not None]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def garbage(draw: st.DrawFn) -> Garbage:
    topic = draw(st.sampled_from(TOPICS))
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "no_headers",
                "bad_header",
                "wrong_types",
                "huge",
                "key_mismatch",
                "deep_json",
                "not_json",
            ]
        )
    )
    good = json.loads(GOOD.model_dump_json())
    if kind == "bytes":  # anything at all
        key = draw(st.none() | st.binary(max_size=64))
        value = draw(
            st.binary(max_size=512) if key is None else st.none() | st.binary(max_size=512)
        )
        return Garbage(
            topic,
            key,
            value,
            draw(
                st.lists(
                    st.tuples(st.text(min_size=1, max_size=12), st.binary(max_size=64)), max_size=5
                )
            ),
        )
    if kind == "no_headers":
        missing = draw(st.sampled_from(["ce_specversion", "ce_id", "ce_source", "ce_type"]))
        return Garbage(
            topic,
            b"L-1",
            json.dumps(good).encode(),
            _ce_headers("loan.overdue.v1", **{missing: None}),
        )
    if kind == "bad_header":  # not UTF-8, oversized, wrong version or content type
        which = draw(st.sampled_from(["utf8", "size", "version", "content", "time"]))
        override: dict[str, bytes] = {
            "utf8": {"ce_id": b"\xff\xfe" + draw(st.binary(max_size=8))},
            "size": {"ce_source": b"s" * 5000},
            "version": {"ce_specversion": draw(st.sampled_from([b"0.3", b"2.0", b""]))},
            "content": {"content-type": b"application/xml"},
            "time": {"ce_time": draw(st.sampled_from([b"yesterday", b"2026-11-22T10:00:00", b""]))},
        }[which]
        return Garbage(
            Topic.LOANS_OVERDUE.value,
            b"L-template",
            json.dumps(good).encode(),
            _ce_headers("loan.overdue.v1", **override),
        )
    if kind == "wrong_types":  # a real event type, fields of the wrong type or missing
        field = draw(st.sampled_from(sorted(good)))
        good[field] = draw(json_values.filter(lambda v: not isinstance(v, str)))
        ce_type = draw(st.sampled_from(TYPES))
        return Garbage(topic, b"L-template", json.dumps(good).encode(), _ce_headers(ce_type))
    if kind == "huge":  # over the record size limit
        size = draw(st.integers(LIMIT + 1, 3 * LIMIT))
        return Garbage(topic, b"L-1", b"{" + b" " * size + b"}", _ce_headers("loan.overdue.v1"))
    if kind == "key_mismatch":
        return Garbage(
            Topic.LOANS_OVERDUE.value,
            b"L-other",
            json.dumps(good).encode(),
            _ce_headers("loan.overdue.v1"),
        )
    if kind == "deep_json":  # nesting that would blow a recursive parser
        depth = draw(st.integers(2_000, 50_000))
        return Garbage(topic, b"L-1", b"[" * depth + b"]" * depth, _ce_headers("loan.overdue.v1"))
    return Garbage(
        topic,
        b"L-1",
        draw(st.text(min_size=1, max_size=200)).encode() + b"{",
        _ce_headers(draw(st.sampled_from(TYPES))),
    )


@dataclass
class World:
    runtime: Runtime
    kafka: AIOKafkaProducer
    prefix: str
    bootstrap: str
    round: int = 0


@pytest.fixture
async def world(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[World]:
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "max_record_bytes": LIMIT,
            "max_attempts": 2,
            "retry_backoff_s": 0.05,
        }
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, config.db_schema)
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        async with running(workflow_boot.build_runtime(config)) as runtime:
            yield World(runtime, kafka, topic_prefix, stack["kafka_bootstrap"])
    finally:
        await kafka.stop()


@settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(garbage(), min_size=1, max_size=12))
async def test_garbage_is_dead_lettered_and_the_consumer_keeps_consuming(
    world: World, batch: list[Garbage]
) -> None:
    world.round += 1
    origins = set()
    for g in batch:
        meta = await world.kafka.send_and_wait(
            world.prefix + g.topic, value=g.value, key=g.key, headers=g.headers
        )
        origins.add((meta.topic, meta.partition, meta.offset))
    loan = f"L-good-{world.round}"
    await lending.Lender(world.kafka, world.prefix).publish(
        lending.overdue(loan, Decimal("100.00"))
    )

    async def good_processed() -> bool:
        async with world.runtime.engine.connect() as conn:
            return (
                await conn.scalar(select(cases.c.case_id).where(cases.c.loan_id == loan))
            ) is not None

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
        assert letter.reason
        assert letter.consumer_group
        assert len(letter.origin_value) <= LIMIT
    assert world.runtime.live()


# --- hostile fields, conflicting duplicates, replays: every service (issue 21) -------------

HOSTILE_BYTES = {
    "nul": b"L\x00x",
    "not_utf8": b"L-\xff\xfe",
    "control": b"L-\x1b[2J",
    "overlong": b"L" * 5000,
}
HOSTILE_FIELDS = ["ce_id", "ce_source", "ce_subject", "ce_type", "ce_traceparent", "key"]
SERVICES = ("workflow", "ledger-sync", "notifier")


def runtime_of(apps: dict[str, FastAPI], service: str) -> Runtime:
    runtime: Runtime = apps[service].state.runtime
    return runtime


async def letters_by_group(bootstrap: str, prefix: str) -> dict[str, list[c.DeadLetter]]:
    found: dict[str, list[c.DeadLetter]] = {}
    for e in await read_topic(bootstrap, prefix + Topic.DLQ.value):
        if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter):
            found.setdefault(e.data.consumer_group.removeprefix(prefix), []).append(e.data)
    return found


async def repayment_amount(runtime: Runtime, repayment_id: str) -> Decimal | None:
    """The amount a service recorded for a repayment (ledger-sync and notifier keep them)."""
    schema = runtime.settings.db_schema
    async with runtime.engine.connect() as conn:
        amount: Decimal | None = await conn.scalar(
            text(f'SELECT amount FROM "{schema}".repayments WHERE repayment_id = :r'),
            {"r": repayment_id},
        )
        return amount


async def test_hostile_fields_on_repayments_are_dead_lettered_by_every_service(
    apps: dict[str, FastAPI], stack: dict[str, str], topic_prefix: str
) -> None:
    """A NUL in ce_id on loans.repayment.v1 used to stop all three services for good; every
    odd field is now dead-lettered with its reason, and the next good record is handled."""
    bootstrap = stack["kafka_bootstrap"]
    topic = topic_prefix + Topic.LOANS_REPAYMENT.value
    kafka = await producer(bootstrap)
    sent: dict[tuple[int, int], tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = {}
    try:
        for field in HOSTILE_FIELDS:
            for name, hostile in HOSTILE_BYTES.items():
                data = lending.repayment(
                    f"L-hostile-{field}-{name}", Decimal("10.00"), Decimal("90.00")
                )
                _, good_key, value, headers = lending.record_for(data)
                key: bytes | None = good_key
                headers.append(("ce_traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"))
                if field == "key":
                    key = hostile
                else:
                    headers = [(n, hostile if n == field else v) for n, v in headers]
                meta = await kafka.send_and_wait(topic, key=key, value=value, headers=headers)
                sent[meta.partition, meta.offset] = (key, value, headers)
        good = lending.repayment("L-good-after-hostile", Decimal("10.00"), Decimal("90.00"))
        await lending.Lender(kafka, topic_prefix).publish(good)
    finally:
        await kafka.stop()

    async def all_dead_lettered() -> dict[str, list[c.DeadLetter]] | None:
        letters = await letters_by_group(bootstrap, topic_prefix)
        complete = all(len(letters.get(s, [])) >= len(sent) for s in SERVICES)
        return letters if complete else None

    letters = await eventually(all_dead_lettered, within=90)
    for service in SERVICES:
        for letter in letters[service]:
            assert letter.error_kind in ("invalid", "undecodable"), letter
            assert letter.reason
            assert "loan_id" not in letter.reason
            original = sent[letter.origin_partition, letter.origin_offset]
            # The letter keeps the record's exact bytes (item 4), cut headers aside.
            key, value, headers = original_record(letter)
            assert (key, value) == original[:2]
            if not any(len(v) >= 1024 for _, v in original[2]):
                assert headers == original[2]
        assert "record key is not UTF-8" in {letter.reason for letter in letters[service]}
    # The list shows what is known: the payload's loan id where the key is not one.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps["workflow"]), base_url="http://workflow"
    ) as client:
        page = await client.get(
            "/v1/dead-letters",
            headers=ADMIN,
            params={"group": topic_prefix + "workflow", "limit": 500},
        )
        assert page.status_code == 200, page.text
        listed = {d["reason"]: d for d in page.json()["dead_letters"]}
        assert listed["record key is not UTF-8"]["loan_id"] == "L-hostile-key-not_utf8"
    for service in ("ledger-sync", "notifier"):
        runtime = runtime_of(apps, service)
        assert await eventually(functools.partial(repayment_amount, runtime, good.repayment_id))
    for service in SERVICES:
        assert runtime_of(apps, service).live()


async def test_a_conflicting_duplicate_is_dead_lettered_and_the_first_effect_stands(
    apps: dict[str, FastAPI], stack: dict[str, str], topic_prefix: str
) -> None:
    bootstrap = stack["kafka_bootstrap"]
    first = lending.repayment("L-dup", Decimal("10.00"), Decimal("90.00"), repayment_id="R-dup")
    other = first.model_copy(update={"amount": Decimal("99.00")})
    kafka = await producer(bootstrap)
    lender = lending.Lender(kafka, topic_prefix)
    try:
        await lender.publish(first, event_id="evt-dup")
        await lender.publish(first, event_id="evt-dup")  # a plain redelivery: silent
        await lender.publish(other, event_id="evt-dup")  # the publisher's bug
        await lender.publish(other, event_id="evt-dup")  # the same bug, sent again
        marker = lending.repayment("L-dup-marker", Decimal("1.00"), Decimal("1.00"))
        await lender.publish(marker)
    finally:
        await kafka.stop()

    async def handled_everywhere() -> bool:
        return all(
            [
                await repayment_amount(runtime_of(apps, s), marker.repayment_id)
                for s in ("ledger-sync", "notifier")
            ]
        )

    await eventually(handled_everywhere, within=60)

    async def conflicts() -> dict[str, list[c.DeadLetter]] | None:
        letters = await letters_by_group(bootstrap, topic_prefix)
        complete = all(len(letters.get(s, [])) >= 2 for s in SERVICES)
        return letters if complete else None

    letters = await eventually(conflicts, within=60)
    for service in SERVICES:
        assert len(letters[service]) == 2, letters[service]  # the silent copy made none
        for letter in letters[service]:
            assert letter.error_kind == "conflicting_duplicate"
            assert "evt-dup" in letter.reason
            assert "another payload" in letter.reason
            assert original_record(letter)[1] == lending.record_for(other)[2]
    for service in ("ledger-sync", "notifier"):
        assert await repayment_amount(runtime_of(apps, service), "R-dup") == Decimal("10.00")
    for service in SERVICES:
        group = runtime_of(apps, service).settings.group_id()
        counted = REGISTRY.get_sample_value(
            "collections_messages_consumed_total",
            {
                "consumer": group,
                "topic": topic_prefix + Topic.LOANS_REPAYMENT.value,
                "result": "conflicting_duplicate",
            },
        )
        assert counted == 2


async def refuse_repayments_of(runtime: Runtime, loan_id: str) -> None:
    """A database that refuses the service's write: its handler fails, for real."""
    schema = runtime.settings.db_schema
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text(
                f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$ '
                "BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'check_violation'; "
                "END $$"
            )
        )
        await conn.execute(
            text(
                f'CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON "{schema}".repayments '
                f"FOR EACH ROW WHEN (NEW.loan_id = '{loan_id}') "
                f'EXECUTE FUNCTION "{schema}".refuse()'
            )
        )


async def accept_repayments_again(runtime: Runtime) -> None:
    schema = runtime.settings.db_schema
    async with runtime.engine.begin() as conn:
        await conn.execute(text(f'DROP TRIGGER refuse ON "{schema}".repayments'))


async def test_a_handler_failed_letter_replays_in_ledger_sync_and_the_notifier(
    apps: dict[str, FastAPI], stack: dict[str, str], topic_prefix: str
) -> None:
    """No inbox delete by hand: the ledger-sync letter is replayed through the workflow's
    API, the notifier's with deploy/ops/dlq_replay.py, both of them as they are."""
    bootstrap = stack["kafka_bootstrap"]
    for service in ("ledger-sync", "notifier"):
        await refuse_repayments_of(runtime_of(apps, service), "L-fails")
    failing = lending.repayment("L-fails", Decimal("10.00"), Decimal("90.00"))
    kafka = await producer(bootstrap)
    try:
        await lending.Lender(kafka, topic_prefix).publish(failing)
    finally:
        await kafka.stop()

    async def failed() -> bool:
        letters = await letters_by_group(bootstrap, topic_prefix)
        return all(
            any(x.error_kind == "handler_failed" for x in letters.get(s, []))
            for s in ("ledger-sync", "notifier")
        )

    await eventually(failed, within=90)
    for service in ("ledger-sync", "notifier"):
        await accept_repayments_again(runtime_of(apps, service))
        assert await repayment_amount(runtime_of(apps, service), failing.repayment_id) is None

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps["workflow"]), base_url="http://workflow"
    ) as client:
        page = await client.get(
            "/v1/dead-letters", headers=ADMIN, params={"group": topic_prefix + "ledger-sync"}
        )
        assert page.status_code == 200, page.text
        (letter,) = page.json()["dead_letters"]
        assert letter["error_kind"] == "handler_failed"
        assert letter["loan_id"] == "L-fails"
        replayed = await client.post(
            f"/v1/dead-letters/{letter['id']}/replay",
            headers={**ADMIN, "Idempotency-Key": "replay-ls-1"},
        )
        assert replayed.status_code == 200, replayed.text
    tool = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(ROOT / "deploy" / "ops" / "dlq_replay.py"),
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topic_prefix,
            "--group",
            topic_prefix + "notifier",
            "--apply",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tool.returncode == 0, tool.stderr
    assert "replayed 1 records" in tool.stdout

    for service in ("ledger-sync", "notifier"):
        runtime = runtime_of(apps, service)
        amount = await eventually(
            functools.partial(repayment_amount, runtime, failing.repayment_id)
        )
        assert amount == Decimal("10.00")


# Produces records with the pure-Python record builder, which lets a header name carry
# bytes that are not UTF-8 (aiokafka's own consumer then cannot parse that record).
_PRODUCE_RAW = """
import asyncio, base64, json, sys
from aiokafka import AIOKafkaProducer

class RawName(str):
    def encode(self, *args, **kwargs):
        return base64.b64decode(self.raw)

async def main(bootstrap, topic):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    futures = []
    for r in json.load(sys.stdin):
        if r.get("new_batch"):
            for f in futures:
                await f
        headers = []
        for name, raw_name, value in r["headers"]:
            if raw_name is not None:
                name = RawName(name)
                name.raw = raw_name
            headers.append((name, base64.b64decode(value)))
        futures.append(await producer.send(topic, key=base64.b64decode(r["key"]),
                                           value=base64.b64decode(r["value"]),
                                           headers=headers))
    offsets = [(await f).offset for f in futures]
    await producer.stop()
    print(json.dumps(offsets))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_record_aiokafka_cannot_parse_is_dead_lettered_and_its_neighbours_handled(
    world: World,
) -> None:
    """A header name that is not UTF-8 makes the Kafka client itself fail on the record, at
    every poll: the loop used to end there, and again on every restart."""

    def entry(
        data: c.Message, bad_name: bytes | None = None, new_batch: bool = False
    ) -> dict[str, Any]:
        _, key, value, headers = lending.record_for(data)
        rows: list[list[str | None]] = [[n, None, base64.b64encode(v).decode()] for n, v in headers]
        if bad_name is not None:
            rows.append(["x", base64.b64encode(bad_name).decode(), base64.b64encode(b"1").decode()])
        return {
            "key": base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(),
            "headers": rows,
            "new_batch": new_batch,
        }

    # One key: one partition. One producer batch with the unreadable record in its middle:
    # the client cannot read past it in that batch, so the record after it is lost to the
    # client too and is dead-lettered as well; the next batch is read as usual.
    before = lending.overdue("L-parse", Decimal("100.00"), dpd=5)
    bad = lending.overdue("L-parse", Decimal("100.00"), dpd=6)
    sibling = lending.overdue("L-parse", Decimal("100.00"), dpd=8)
    after = lending.overdue("L-parse", Decimal("100.00"), dpd=7)
    records = [
        entry(before),
        entry(bad, b"ce_\xff\xfe"),
        entry(sibling),
        entry(after, new_batch=True),
    ]
    topic = world.prefix + Topic.LOANS_OVERDUE.value
    produced = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _PRODUCE_RAW, world.bootstrap, topic],
        input=json.dumps(records),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
    )
    assert produced.returncode == 0, produced.stderr
    offsets = json.loads(produced.stdout)

    async def dead_lettered() -> list[c.DeadLetter] | None:
        letters = [
            e.data
            for e in await read_topic(world.bootstrap, world.prefix + Topic.DLQ.value)
            if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter)
        ]
        return letters if len(letters) >= 2 else None

    letters = await eventually(dead_lettered, within=60)
    assert sorted(letter.origin_offset for letter in letters) == offsets[1:3]
    for letter in letters:
        assert letter.origin_topic == topic
        assert letter.error_kind == "undecodable"
        assert "could not be read" in letter.reason

    async def days_past_due() -> int | None:
        async with world.runtime.engine.connect() as conn:
            dpd: int | None = await conn.scalar(
                select(cases.c.days_past_due).where(cases.c.loan_id == "L-parse")
            )
            return dpd if dpd == 7 else None

    assert await eventually(days_past_due, within=60) == 7
    neighbours = {
        base64.b64decode(value).decode()
        for r in (records[0], records[3])
        for name, _, value in r["headers"]
        if name == "ce_id"
    }
    async with world.runtime.engine.connect() as conn:
        claimed = set(
            (
                await conn.execute(
                    text(
                        f"SELECT unnest(event_ids) FROM "
                        f'"{world.runtime.settings.db_schema}".inbox_claims'
                    )
                )
            ).scalars()
        )
    assert neighbours <= claimed  # handled, both of them
    assert world.runtime.live()


async def test_a_dead_letter_that_cannot_be_stored_never_stops_the_consumer(world: World) -> None:
    """The database refuses the letters of two records (a trigger on the outbox): the first
    is dead-lettered bare (origin and reason), the second not at all (logged and counted);
    either way the consumer goes on to the next good record."""
    schema = world.runtime.settings.db_schema
    async with world.runtime.engine.begin() as conn:
        await conn.execute(
            text(
                f'CREATE FUNCTION "{schema}".refuse_letter() RETURNS trigger LANGUAGE plpgsql '
                "AS $$ BEGIN IF EXISTS (SELECT 1 FROM unnest(NEW.topics, NEW.payloads) "
                "AS m(topic, value) WHERE m.topic LIKE '%collections.dlq.v1' "
                "AND (position('L-unkeepable' IN convert_from(m.value, 'UTF8')) > 0 "
                "OR position('loan.unstorable' IN convert_from(m.value, 'UTF8')) > 0)) THEN "
                "RAISE EXCEPTION 'letter refused for the test' "
                "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                f'CREATE TRIGGER refuse_letter BEFORE INSERT ON "{schema}".outbox FOR EACH ROW '
                f'EXECUTE FUNCTION "{schema}".refuse_letter()'
            )
        )
    _, key, value, headers = lending.record_for(lending.overdue("L-unkeepable", Decimal("9")))
    broken = value.replace(b'"days_past_due":5', b'"days_past_due":"many"')
    unknown = [(n, b"loan.unstorable.v1" if n == "ce_type" else v) for n, v in headers]
    topic = world.prefix + Topic.LOANS_OVERDUE.value
    first = await world.kafka.send_and_wait(topic, key=key, value=broken, headers=headers)
    await world.kafka.send_and_wait(topic, key=key, value=value, headers=unknown)
    failures = REGISTRY.get_sample_value(
        "collections_dead_letter_failures_total", {"consumer": world.runtime.settings.group_id()}
    )
    await lending.Lender(world.kafka, world.prefix).publish(
        lending.overdue("L-after-unkeepable", Decimal("100.00"))
    )

    async def good_processed() -> bool:
        async with world.runtime.engine.connect() as conn:
            return (
                await conn.scalar(
                    select(cases.c.case_id).where(cases.c.loan_id == "L-after-unkeepable")
                )
            ) is not None

    await eventually(good_processed, within=60)

    def skipped() -> bool:
        after = REGISTRY.get_sample_value(
            "collections_dead_letter_failures_total",
            {"consumer": world.runtime.settings.group_id()},
        )
        return (after or 0) == (failures or 0) + 1

    await eventually(skipped, within=60)
    letters = [
        e.data
        for e in await read_topic(world.bootstrap, world.prefix + Topic.DLQ.value)
        if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter)
    ]
    assert [(d.origin_offset, d.error_kind, d.origin_key, d.origin_value) for d in letters] == [
        (first.offset, "invalid", None, "")
    ]
    assert "could not be kept in this letter" in letters[0].reason
    assert "days_past_due" in letters[0].reason
    assert world.runtime.live()
