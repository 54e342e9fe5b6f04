"""OpenTelemetry tracing across the Kafka hops and the REST API.

Trace context travels in W3C ``traceparent``/``tracestate``: on Kafka as the CloudEvents
distributed-tracing extension (``ce_traceparent``, ``ce_tracestate`` headers, so it survives
the outbox and the DLQ like any other attribute), over HTTP as the standard headers.

- The consumer opens one CONSUMER span per handled message, child of the context the
  message carries, and ends it when the batch's transaction has committed.
- ``Tx.publish`` stamps each staged message with the context of the message that caused it
  (same subject, i.e. same loan, in the batch), else the current span (a REST request).
- A REST request is a SERVER span, child of the caller's ``traceparent`` if it sent one:
  FastAPI's native telemetry makes it (configured by ``HTTP_TELEMETRY``).

Without an exporter configured only the OpenTelemetry API runs: no spans are recorded, but
an incoming context is still passed on unchanged, so a trace started upstream stays whole.
With ``<PREFIX>OTEL_EXPORTER_OTLP_ENDPOINT`` set, spans go to that collector over OTLP/HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from collections_kit.settings import ServiceSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("collections_kit")

# The CloudEvents extension attributes that carry the context (ce_ prefix on the wire).
TRACE_ATTRIBUTES = ("traceparent", "tracestate")


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a message's extensions or a request's headers carry (empty if none)."""
    return propagate.extract(dict(carrier))


def inject(span: Span | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``span``, or of the current span."""
    if not (span if span is not None else trace.get_current_span()).get_span_context().is_valid:
        # Nothing to pass on (no trace upstream, none started here): the propagators would
        # write nothing, and running them was 5% of the workflow's CPU.
        return {}
    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=context)
    return {k: v for k, v in carrier.items() if k in TRACE_ATTRIBUTES}


def start_consume(
    topic: str,
    partition: int,
    offset: int,
    event_id: str,
    ce_type: str,
    group: str,
    extensions: Mapping[str, str],
) -> Span:
    """A CONSUMER span for one message, child of the producer's context."""
    if "traceparent" not in extensions and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        # No SDK installed and no context to pass on: the span would be the invalid one
        # anyway, and extracting and building its attributes cost about 2 us a message.
        return trace.INVALID_SPAN
    return tracer.start_span(
        f"{topic} process",
        context=extract(extensions),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.message.id": event_id,
            "messaging.consumer.group.name": group,
            "cloudevents.event_type": ce_type,
        },
    )


def end(spans: Sequence[Span], error: BaseException | None = None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def exclude_from_http_telemetry(scope: MutableMapping[str, Any]) -> bool:
    """Probes and scrapes are not traced: they would drown the traces that matter."""
    return scope.get("path") in UNTRACED_PATHS


# FastAPI's own telemetry, narrowed: request spans (child of the caller's ``traceparent``,
# named by the route template) and nothing else. Metrics are Prometheus' job here, and its
# log records would carry rejected request values, which can be personal data.
HTTP_TELEMETRY: TelemetryConfig = {
    "tracing": True,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "exclude": exclude_from_http_telemetry,
}
UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def configure(settings: ServiceSettings) -> None:
    """Install the SDK with an OTLP/HTTP exporter when an endpoint is configured."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return
    # Imported here: without an endpoint the SDK and exporter are never loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": settings.service_name,
                "deployment.environment.name": settings.environment,
            }
        ),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"))
    )
    trace.set_tracer_provider(provider)
    log.info("tracing to %s (sample ratio %.3f)", endpoint, settings.otel_sample_ratio)


def shutdown() -> None:
    """Flush what is buffered (the SDK's provider has ``shutdown``; the API's has not)."""
    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if callable(stop):
        stop()
