"""A case as its REST clients read and change it, against the real broker and PostgreSQL:
arrangements stay readable after they end; holds can be backdated and end by themselves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually, mismatched_replays

READ = dev_headers(["cases:read"], subject="reader")
WRITE = dev_headers(["cases:read", "cases:write"], subject="agent:7")


async def post(
    api: httpx.AsyncClient, loan_id: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    return await api.post(
        f"/v1/cases/{loan_id}/{path}",
        json=body,
        headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())},
    )


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


async def open_case(api: httpx.AsyncClient, lender: lending.Lender, loan_id: str) -> dict[str, Any]:
    await lender.publish(lending.overdue(loan_id, Decimal("1000.00")))
    case = await eventually(lambda: case_of(api, loan_id))
    assert isinstance(case, dict)
    return case


async def test_a_kept_promise_is_read_back_with_what_was_paid(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await open_case(api, lender, "L-kept")
    due = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    promised = await post(
        api,
        "L-kept",
        "arrangements",
        {"kind": "promise_to_pay", "schedule": [{"due_at": due, "amount": "300.00"}]},
    )
    assert promised.status_code == 200, promised.text
    await lender.publish(lending.repayment("L-kept", Decimal("300.00"), Decimal("700.00")))

    async def kept() -> dict[str, Any] | None:
        case = await case_of(api, "L-kept")
        return case if case and case["last_arrangement"] else None

    case = await eventually(kept)
    assert case["arrangement"] is None
    last = case["last_arrangement"]
    assert last["outcome"] == "kept"
    assert last["kind"] == "promise_to_pay"
    assert Decimal(last["paid"]) == Decimal("300") == Decimal(last["total"])
    assert last["ended_at"] is not None
    assert await mismatched_replays(workflow.engine) == []


async def test_a_backdated_breathing_space_lists_the_contacts_made_inside_it(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    case = await open_case(api, lender, "L-advice")
    now = datetime.now(UTC)
    intent_id = case["intents"][0]["intent_id"]
    # A text went out an hour ago; before it, one three days ago (outside the window).
    for command_id, ago in (("cmd-old", timedelta(days=3)), ("cmd-in", timedelta(hours=1))):
        await lender.publish(
            c.ContactOutcome(
                command_id=command_id,
                intent_id=intent_id,
                loan_id="L-advice",
                channel="sms",
                outcome="sent",
                occurred_at=now - ago,
            )
        )
    await eventually(lambda: timeline_has(api, "L-advice", "cmd-in"))

    future = await post(
        api,
        "L-advice",
        "holds",
        {
            "kind": "breathing_space",
            "reason": "debt advice applied for",
            "effective_from": (now + timedelta(hours=2)).isoformat(),
        },
    )
    assert future.status_code == 422
    assert future.json()["errors"][0]["loc"] == ["body", "effective_from"]

    applied = now - timedelta(days=2)
    held = await post(
        api,
        "L-advice",
        "holds",
        {
            "kind": "breathing_space",
            "reason": "debt advice applied for",
            "effective_from": applied.isoformat(),
        },
    )
    assert held.status_code == 200, held.text
    hold = held.json()["hold"]
    assert datetime.fromisoformat(hold["effective_from"]) == applied
    assert datetime.fromisoformat(hold["until"]) == applied + timedelta(days=60)
    assert [c["command_id"] for c in hold["contacts_during_hold"]] == ["cmd-in"]
    read = await case_of(api, "L-advice")
    assert read is not None
    assert read["hold"]["contacts_during_hold"] == hold["contacts_during_hold"]
    assert await mismatched_replays(workflow.engine) == []


async def test_a_hold_ends_by_itself_at_its_end_date_and_reconfirms_before_contact(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender, clock: OffsetClock
) -> None:
    await open_case(api, lender, "L-until")
    now = clock.now()
    held = await post(
        api,
        "L-until",
        "holds",
        {
            "kind": "hardship",
            "reason": "in hospital until next week",
            "effective_from": (now - timedelta(days=1)).isoformat(),
            "until": (now + timedelta(days=7)).isoformat(),
        },
    )
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "held"
    clock.advance(timedelta(days=7, minutes=1))

    async def resumed() -> dict[str, Any] | None:
        case = await case_of(api, "L-until")
        return case if case and case["status"] == "open" else None

    case = await eventually(resumed)
    assert case["hold"] is None
    waiting = [i for i in case["intents"] if i["status"] == "awaiting_confirmation"]
    assert waiting
    assert [i["command_id"] for i in waiting] == [None] * len(waiting)
    kinds = [
        e["kind"]
        for e in (await api.get("/v1/cases/L-until/timeline", headers=READ)).json()["entries"]
    ]
    assert kinds[-1 - len(waiting)] == "case_resumed"
    assert await mismatched_replays(workflow.engine) == []


async def timeline_has(api: httpx.AsyncClient, loan_id: str, command_id: str) -> bool:
    entries = (await api.get(f"/v1/cases/{loan_id}/timeline", headers=READ)).json()["entries"]
    return any(e["detail"].get("command_id") == command_id for e in entries)
