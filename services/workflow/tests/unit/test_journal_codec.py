"""Journal entries decode to exactly the input that was decided on."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from collections_kit.db import _document
from workflow.adapters.journal import decode_input, encode_input
from workflow.domain import decide as d
from workflow.domain import messages as m

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

SAMPLES: list[d.Input] = [
    m.OverdueReported(
        "e",
        "L",
        "B",
        "p",
        "CNY",
        Decimal("1.10"),
        Decimal("100.000001"),
        5,
        AT,
        "Asia/Shanghai",
        "CN",
    ),
    m.OverdueReported(
        "e",
        "L",
        "B",
        "p",
        "CNY",
        Decimal("1.10"),
        Decimal("100"),
        5,
        AT,
        "Asia/Shanghai",
        "CN",
        money_seen=m.MoneySeen("e0", "repayment", "R", Decimal("100"), Decimal("0"), AT),
    ),
    m.RecordArrangement(
        "k",
        "instalment_plan",
        (m.InstalmentTerms(AT, Decimal("5")), m.InstalmentTerms(AT, Decimal("7.5"))),
        "a",
        interest_reduction=None,
        note="n",
    ),
    m.RequestHold("k", "breathing_space", "r", "a", until=AT),
    m.RequestHold("k", "breathing_space", "r", "a", effective_from=AT),
    m.ContactOutcomeReported("e", "c", "i", "sms", "sent", "", occurred_at=AT),
    m.RequestResume("k", "r", "a", None),
    m.TimerFired("t", "recheck", "i:1", AT),
    m.BalanceConfirmed("e", "c", "conf", Decimal("9"), 3, AT, AT),
    m.RiskSignalReceived(
        "e",
        "S",
        "L",
        "B",
        "p",
        "income_drop",
        Decimal("0.825"),
        "CNY",
        Decimal("100.50"),
        AT,
        AT,
        "Asia/Shanghai",
        "CN",
    ),
    m.TimerFired("t", "signal_expiry", AT.isoformat(), AT),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: d.Input) -> None:
    """Through the encoder the journal's rows are written with."""
    input_type, payload = encode_input(event)
    ((stored,),) = json.loads(_document([{"payload": payload}], ("payload",)))
    assert decode_input(input_type, stored) == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_journals_written_with_tags_still_decode(event: d.Input) -> None:
    """Before 2026-12 amounts and times were stored tagged ({"$d": ...}, {"$t": ...})."""
    assert decode_input(type(event).__name__, _tagged(event)) == event


def _tagged(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, tuple):
        return [_tagged(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _tagged(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value
