"""Hostile header and key fields (issue 21, items 2 and 4): every field that reaches a
database column or a log line is checked on decode, and the dead letter of any record,
however odd, can be stored and published and gives back the original bytes for a replay."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collections_kit import contract as c
from collections_kit.consumer import dead_letter_of, original_record
from collections_kit.envelope import Envelope, MalformedMessageError, decode, encode

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
HOSTILE = {
    "nul": b"L\x00x",
    "not_utf8": b"L\xff\xfe",
    "control": b"L\x1b[2Jx",
    "newline": b"L1\nforged log line",
    "overlong": b"L" * 5000,
}


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def good() -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    data = c.RepaymentReceived(
        repayment_id="R1",
        loan_id="L1",
        currency="CNY",
        amount=Decimal("0.10"),
        outstanding_balance_after=Decimal("9.90"),
        received_at=NOW,
    )
    return encode(
        Envelope(
            "id-1",
            "loan.repayment.received.v1",
            "lender",
            NOW,
            "L1",
            data,
            {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        )
    )


def with_header(
    headers: list[tuple[str, bytes]], name: str, value: bytes
) -> list[tuple[str, bytes]]:
    return [(n, value if n == name else v) for n, v in headers]


@pytest.mark.parametrize("field", ["ce_id", "ce_source", "ce_subject", "ce_type", "ce_traceparent"])
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_header_is_refused_with_its_reason(field: str, hostile: str) -> None:
    key, value, headers = good()
    with pytest.raises(MalformedMessageError) as err:
        decode(key, value, with_header(headers, field, HOSTILE[hostile]))
    assert field in err.value.reason
    assert err.value.kind in ("invalid", "undecodable")


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_key_is_refused_with_its_reason(hostile: str) -> None:
    _, value, headers = good()
    with pytest.raises(MalformedMessageError) as err:
        decode(HOSTILE[hostile], value, headers)
    assert "record key" in err.value.reason
    assert "loan_id" not in err.value.reason  # not the misleading reason of item 4


def test_a_key_that_is_not_utf8_says_so() -> None:
    _, value, headers = good()
    with pytest.raises(MalformedMessageError) as err:
        decode(b"L1\xff", value, headers)
    assert err.value.reason == "record key is not UTF-8"


def test_the_dead_letter_keeps_a_non_utf8_key_and_replays_it_exactly() -> None:
    _, value, headers = good()
    record = Record("loans.repayment.v1", 0, 7, b"L1\xff", value, headers)
    letter, subject = dead_letter_of(
        record,
        MalformedMessageError("invalid", "x"),
        group="workflow",
        now=NOW,
        max_value_chars=1 << 20,
    )
    assert letter.key_encoding == "base64"
    assert subject == ""
    assert original_record(letter) == (record.key, record.value, record.headers)


def _storable(text: str) -> bool:
    # What PostgreSQL text and JSONB columns and a log line take.
    return "\x00" not in text and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


header_names = st.sampled_from(
    [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "content-type",
        "ce_traceparent",
    ]
) | st.text(min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=40),
    replaced=st.dictionaries(header_names, st.binary(max_size=80), max_size=6),
    extra=st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=3),
)
def test_any_bytes_anywhere_raise_only_malformed_and_dead_letter_cleanly(
    key: bytes | None, replaced: dict[str, bytes], extra: list[tuple[str, bytes]]
) -> None:
    _, value, headers = good()
    for name, raw in replaced.items():
        headers = with_header(headers, name, raw)
    headers = headers + extra
    try:
        decoded = decode(key, value, headers)
    except MalformedMessageError as exc:
        error = exc
    else:
        # What passes may reach the inbox, the logs and the case: storable text only.
        for text in (
            decoded.id,
            decoded.source,
            decoded.subject,
            decoded.type,
            *decoded.extensions,
            *decoded.extensions.values(),
        ):
            assert _storable(text)
            assert text.isprintable()
        error = MalformedMessageError("handler_failed", "boom")
    record = Record("loans.repayment.v1", 1, 42, key, value, headers)
    letter, subject = dead_letter_of(
        record, error, group="workflow", now=NOW, max_value_chars=1 << 20
    )
    # Publishable: the letter's own envelope goes through the outbox (JSONB headers).
    dlq_key, dlq_value, dlq_headers = encode(
        Envelope(
            "dlq:workflow:loans.repayment.v1/1/42",
            "collections.dead-letter.v1",
            "workflow",
            NOW,
            subject,
            letter,
        )
    )
    assert _storable(subject)
    assert subject.isprintable()
    assert [v for _, v in dlq_headers if not _storable(v.decode())] == []
    json.loads(dlq_value)
    again = decode(dlq_key, dlq_value, dlq_headers).data
    assert again == letter
    # Replayable: the original bytes come back. Kafka headers are a list, a letter keeps
    # one value per name: the last one.
    expected = list({n: v for n, v in headers}.items())
    assert original_record(letter) == (key, value, expected)
