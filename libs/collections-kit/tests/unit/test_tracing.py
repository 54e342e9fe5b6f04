"""What ``tracing.inject`` stamps on a staged message, without an SDK installed (as the
services run unless an OTLP endpoint is configured): an upstream trace is passed on
unchanged, and no trace means no attributes."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from collections_kit import tracing


def test_an_upstream_trace_is_passed_on_without_an_sdk() -> None:
    upstream = NonRecordingSpan(
        SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState([("lender", "x")]),
        )
    )

    assert tracing.inject(upstream) == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "lender=x",
    }


def test_no_trace_stamps_nothing() -> None:
    assert tracing.inject(INVALID_SPAN) == {}
    assert tracing.inject() == {}  # no current span either


def test_a_consumed_message_passes_its_trace_on() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    span = tracing.start_consume("t", 0, 7, "e-1", "x.v1", "g", {"traceparent": parent})

    assert tracing.inject(span)["traceparent"].split("-")[1] == parent.split("-")[1]


def test_a_message_without_a_trace_opens_no_span_without_an_sdk() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("an SDK was installed by another test in this process")

    assert tracing.start_consume("t", 0, 7, "e-1", "x.v1", "g", {}) is INVALID_SPAN
