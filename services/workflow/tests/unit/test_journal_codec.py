"""Journal entries decode to exactly the input that was decided on."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from workflow.adapters.journal import decode_input, encode_input
from workflow.domain import decide as d
from workflow.domain import messages as m

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

SAMPLES: list[d.Input] = [
    m.OverdueReported("e", "L", "B", "p", "CNY", Decimal("1.10"), Decimal("100.000001"), 5, AT,
                      "Asia/Shanghai", "CN"),
    m.RecordArrangement("k", "instalment_plan", (m.InstalmentTerms(AT, Decimal("5")),
                                                 m.InstalmentTerms(AT, Decimal("7.5"))), "a",
                        interest_reduction=None, note="n"),
    m.RequestHold("k", "breathing_space", "r", "a", until=AT),
    m.RequestResume("k", "r", "a", None),
    m.TimerFired("t", "recheck", "i:1", AT),
    m.BalanceConfirmed("e", "c", "conf", Decimal("9"), 3, AT, AT),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: d.Input) -> None:
    import json

    input_type, payload = encode_input(event)
    assert decode_input(input_type, json.loads(json.dumps(payload))) == event
