"""One trace across the Kafka hops: an overdue event produced with a W3C trace context is
followed, in the same trace, by the workflow's balance check, ledger-sync's confirmation,
the workflow's contact command and the notifier's handling of it, each a CONSUMER span of
its service's group, and every record on the way carries ``ce_traceparent``. A REST call
with ``traceparent`` is a SERVER span of that trace, named by its route template.

The three runtimes run in-process with the OpenTelemetry SDK and an in-memory exporter (the
services install an OTLP exporter instead when an endpoint is configured)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from collections_kit.auth import dev_headers
from collections_kit.envelope import Envelope
from collections_kit.topics import Topic
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, read_topic


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # The global provider can be set once per process; later modules reuse it.
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def _traceparent(trace_id: int) -> str:
    return f"00-{trace_id:032x}-{random.getrandbits(64) | 1:016x}-01"


def _trace_of(envelope: Envelope) -> int | None:
    parent = envelope.extensions.get("traceparent")
    return int(parent.split("-")[1], 16) if parent else None


def _groups(spans: tuple[ReadableSpan, ...], trace_id: int) -> dict[str, set[str]]:
    """consumer group -> topics it processed in this trace."""
    seen: dict[str, set[str]] = {}
    for span in spans:
        if span.context is None or span.context.trace_id != trace_id:
            continue
        if span.kind is SpanKind.CONSUMER and span.attributes:
            group = str(span.attributes["messaging.consumer.group.name"])
            seen.setdefault(group, set()).add(str(span.attributes["messaging.destination.name"]))
    return seen


async def test_an_overdue_event_and_everything_it_causes_share_one_trace(
    exporter: InMemorySpanExporter,
    apps: dict[str, FastAPI],
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    trace_id = random.getrandbits(128) | 1
    loan = "L-trace-1"
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        await lending.Lender(kafka, topic_prefix).publish(
            lending.disbursement(loan, Decimal("900.00"))
        )
        name, key, value, headers = lending.record_for(
            lending.overdue(loan, Decimal("900.00")), event_id="overdue-traced-1"
        )
        await kafka.send_and_wait(
            topic_prefix + name,
            key=key,
            value=value,
            headers=[*headers, ("ce_traceparent", _traceparent(trace_id).encode())],
        )
    finally:
        await kafka.stop()

    def topic(t: Topic) -> str:
        return topic_prefix + t.value

    expected = {
        f"{topic_prefix}workflow": {topic(Topic.LOANS_OVERDUE), topic(Topic.BALANCE_CONFIRMATIONS)},
        f"{topic_prefix}ledger-sync": {topic(Topic.BALANCE_CHECKS)},
        f"{topic_prefix}notifier": {topic(Topic.CONTACT_COMMANDS)},
    }

    def whole() -> bool:
        seen = _groups(exporter.get_finished_spans(), trace_id)
        return all(expected[g] <= seen.get(g, set()) for g in expected)

    try:
        await eventually(whole, within=90)
    except AssertionError:
        raise AssertionError(
            f"spans of the trace: {_groups(exporter.get_finished_spans(), trace_id)}"
        ) from None

    # On the wire: each hop's record names the same trace.
    for hop in (Topic.BALANCE_CHECKS, Topic.BALANCE_CONFIRMATIONS, Topic.CONTACT_COMMANDS):
        records = [
            e
            for e in await read_topic(stack["kafka_bootstrap"], topic(hop))
            if isinstance(e, Envelope) and e.subject == loan
        ]
        assert records, hop
        assert {_trace_of(e) for e in records} == {trace_id}, hop

    # A REST request joins its caller's trace, named by the route, never the raw path.
    rest_trace = random.getrandbits(128) | 1
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps["workflow"]), base_url="http://workflow"
    ) as client:
        answer = await client.get(
            f"/v1/cases/{loan}", headers={**dev_headers(), "traceparent": _traceparent(rest_trace)}
        )
        assert answer.status_code == 200, answer.text
    servers = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.context is not None and s.context.trace_id == rest_trace
    ]
    assert [s.name for s in servers] == ["GET /v1/cases/{loan_id}"]
    assert servers[0].attributes is not None
    assert servers[0].attributes["http.response.status_code"] == 200

    # What a REST command publishes continues the request's trace.
    hold_trace = random.getrandbits(128) | 1
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps["workflow"]), base_url="http://workflow"
    ) as client:
        answer = await client.post(
            f"/v1/cases/{loan}/holds",
            json={"kind": "hardship", "reason": "lost her job"},
            headers={
                **dev_headers(),
                "Idempotency-Key": f"hold-{hold_trace:x}",
                "traceparent": _traceparent(hold_trace),
            },
        )
        assert answer.status_code == 200, answer.text

    async def hold_events() -> list[Envelope]:
        # The outbox relay publishes after the commit: wait for it.
        return [
            e
            for e in await read_topic(stack["kafka_bootstrap"], topic(Topic.CASE_EVENTS))
            if isinstance(e, Envelope) and e.subject == loan and _trace_of(e) == hold_trace
        ]

    await eventually(hold_events, within=30)
