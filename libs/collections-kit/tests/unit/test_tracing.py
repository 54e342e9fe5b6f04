"""What ``tracing.inject`` stamps on a staged message, without an SDK installed (as the
services run unless an OTLP endpoint is configured): an upstream trace is passed on
unchanged, and no trace means no attributes."""

from __future__ import annotations

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
