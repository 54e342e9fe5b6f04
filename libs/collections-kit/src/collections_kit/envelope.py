"""CloudEvents 1.0 in Kafka binary mode: attributes in ``ce_*`` headers, JSON payload.

The record key is the loan id, so every event of one loan lands on one partition and is
consumed in order.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from collections_kit.contract import SPEC_BY_MODEL, SPEC_BY_TYPE, Message

CONTENT_TYPE = "application/json"
# Kafka headers are bytes; anything larger than this in one header is refused as hostile.
_MAX_HEADER_BYTES = 4096
# The key and the core attributes become ids in database columns and log lines: bounded
# tighter than any other header.
MAX_ATTRIBUTE_CHARS = 256
# Only printable text (str.isprintable: no control character, no line or paragraph
# separator) in the key, in header names and in every header a service reads: PostgreSQL
# text cannot hold NUL, the others forge log lines or break terminals. isprintable is one
# C call per string, a measurable saving over a regex on the consumer's hot path.


class MalformedMessageError(Exception):
    """The record cannot be turned into a known, valid message; it goes to the DLQ."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Envelope:
    id: str
    type: str
    source: str
    time: datetime
    subject: str
    data: Message
    # W3C trace context and other extension attributes travel as extra headers.
    extensions: dict[str, str] = field(default_factory=dict)


def encode(envelope: Envelope) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Return ``(key, value, headers)`` for a Kafka record."""
    key, value, headers = encode_text_headers(envelope)
    return key, value, [(name, text.encode()) for name, text in headers]


def encode_text_headers(envelope: Envelope) -> tuple[bytes, bytes, list[tuple[str, str]]]:
    """``encode``, with the header values still text: what the outbox stores (as JSON),
    so they are not encoded here only to be decoded again for the outbox's document."""
    spec = SPEC_BY_MODEL[type(envelope.data)]
    if spec.ce_type != envelope.type:
        raise ValueError(f"{type(envelope.data).__name__} is published as {spec.ce_type}")
    headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", envelope.id),
        ("ce_source", envelope.source),
        ("ce_type", envelope.type),
        ("ce_time", envelope.time.isoformat()),
        ("ce_subject", envelope.subject),
        ("content-type", CONTENT_TYPE),
    ]
    headers.extend((f"ce_{k}", v) for k, v in sorted(envelope.extensions.items()))
    return envelope.subject.encode(), envelope.data.model_dump_json().encode(), headers


def decode_headers(raw: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        if len(name) > MAX_ATTRIBUTE_CHARS or not name.isprintable():
            raise MalformedMessageError(
                "invalid", f"header name {name[:40]!r} is overlong or not printable"
            )
        if len(value) > _MAX_HEADER_BYTES:
            raise MalformedMessageError("undecodable", f"header {name!r} is larger than allowed")
        try:
            text = value.decode()
        except UnicodeDecodeError as exc:
            raise MalformedMessageError("undecodable", f"header {name!r} is not UTF-8") from exc
        if name.startswith("ce_") or name == "content-type":
            # Every header a service reads reaches a log line, a span or a column.
            limit = MAX_ATTRIBUTE_CHARS if name in _CORE else _MAX_HEADER_BYTES
            if len(text) > limit or not text.isprintable():
                _check_text(f"header {name!r}", text, limit)
        headers[name] = text
    return headers


def decode_key(key: bytes | None) -> str | None:
    """The record key as text (the loan id), or :class:`MalformedMessageError` saying why."""
    if key is None:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError as exc:
        raise MalformedMessageError("undecodable", "record key is not UTF-8") from exc
    _check_text("record key", text, MAX_ATTRIBUTE_CHARS)
    return text


def _check_text(what: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise MalformedMessageError("invalid", f"{what} is longer than {limit} characters")
    if not text.isprintable():
        raise MalformedMessageError(
            "invalid", f"{what} holds a character that is not printable (a control character, say)"
        )


def is_safe_text(text: str) -> bool:
    """Whether ``text`` may go where an attribute goes (a column, a header, a log line)."""
    return len(text) <= MAX_ATTRIBUTE_CHARS and text.isprintable()


_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")
_CORE = {*_REQUIRED, "ce_time", "ce_subject"}


def decode(
    key: bytes | None, value: bytes | None, raw_headers: list[tuple[str, bytes]] | tuple[Any, ...]
) -> Envelope:
    """Parse and validate one record, or raise :class:`MalformedMessageError` saying why."""
    headers = decode_headers(raw_headers)
    key_text = decode_key(key)
    missing = [h for h in _REQUIRED if h not in headers]
    if missing:
        raise MalformedMessageError(
            "undecodable", f"missing CloudEvents headers: {', '.join(missing)}"
        )
    empty = [h for h in ("ce_id", "ce_source") if not headers[h]]
    if empty:
        # An empty id would be one inbox claim shared by every such event.
        raise MalformedMessageError("invalid", f"empty CloudEvents headers: {', '.join(empty)}")
    if headers["ce_specversion"] != "1.0":
        raise MalformedMessageError(
            "undecodable", f"unsupported specversion {headers['ce_specversion']}"
        )
    content_type = headers.get("content-type", CONTENT_TYPE).split(";")[0].strip()
    if content_type != CONTENT_TYPE:
        raise MalformedMessageError("undecodable", f"content-type {content_type!r} is not JSON")
    spec = SPEC_BY_TYPE.get(headers["ce_type"])
    if spec is None:
        raise MalformedMessageError("unknown_type", f"unknown event type {headers['ce_type']!r}")
    if value is None:
        raise MalformedMessageError("undecodable", "record has no value")
    try:
        # Parsed and validated in one pass by pydantic-core (json.loads then model_validate
        # was a tenth of a consumer's CPU).
        data = spec.model.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise MalformedMessageError(
                "undecodable",
                f"payload is not JSON: {first['ctx'].get('error', '')}"
                if "ctx" in first
                else "payload is not JSON",
            ) from exc
        raise MalformedMessageError("invalid", _summarise(exc)) from exc
    subject = headers.get("ce_subject") or key_text or ""
    try:
        time = datetime.fromisoformat(headers["ce_time"]) if "ce_time" in headers else None
    except ValueError as exc:
        raise MalformedMessageError("invalid", "ce_time is not an RFC 3339 time") from exc
    if time is None or time.tzinfo is None:
        raise MalformedMessageError("invalid", "ce_time is required and must carry an offset")
    loan_id = getattr(data, "loan_id", None)
    if loan_id is not None and key_text is not None and key_text != loan_id:
        raise MalformedMessageError("invalid", "record key differs from the payload's loan_id")
    extensions = {k[3:]: v for k, v in headers.items() if k.startswith("ce_") and k not in _CORE}
    extensions.pop("specversion", None)
    return Envelope(
        id=headers["ce_id"],
        type=spec.ce_type,
        source=headers["ce_source"],
        time=time,
        subject=subject,
        data=data,
        extensions=extensions,
    )


def _summarise(exc: ValidationError) -> str:
    # Field paths and error kinds only: the offending values may be personal data.
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['type']}" for e in exc.errors()]
    return "invalid payload: " + "; ".join(parts[:10])


Encoding = Literal["utf-8", "base64"]


def printable_value(value: bytes | None) -> tuple[str, Encoding]:
    """The original value for a dead letter: text when UTF-8, else base64."""
    if value is None:
        return "", "utf-8"
    try:
        return value.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), "base64"
