"""A case as its REST clients read and change it, against the real broker and PostgreSQL:
arrangements stay readable after they end; holds can be backdated and end by themselves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from collections_kit.auth import dev_headers
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually, mismatched_replays

READ = dev_headers(["cases:read"], subject="reader")
WRITE = dev_headers(["cases:read", "cases:write"], subject="agent:7")


async def post(api: httpx.AsyncClient, loan_id: str, path: str,
               body: dict[str, Any]) -> httpx.Response:
    return await api.post(f"/v1/cases/{loan_id}/{path}", json=body,
                          headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())})


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


async def open_case(api: httpx.AsyncClient, lender: lending.Lender, loan_id: str
                    ) -> dict[str, Any]:
    await lender.publish(lending.overdue(loan_id, Decimal("1000.00")))
    case = await eventually(lambda: case_of(api, loan_id))
    assert isinstance(case, dict)
    return case


async def test_a_kept_promise_is_read_back_with_what_was_paid(
        workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender) -> None:
    await open_case(api, lender, "L-kept")
    due = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    promised = await post(api, "L-kept", "arrangements", {
        "kind": "promise_to_pay", "schedule": [{"due_at": due, "amount": "300.00"}]})
    assert promised.status_code == 200, promised.text
    await lender.publish(lending.repayment("L-kept", Decimal("300.00"), Decimal("700.00")))

    async def kept() -> dict[str, Any] | None:
        case = await case_of(api, "L-kept")
        return case if case and case["last_arrangement"] else None

    case = await eventually(kept)
    assert case["arrangement"] is None
    last = case["last_arrangement"]
    assert last["outcome"] == "kept" and last["kind"] == "promise_to_pay"
    assert Decimal(last["paid"]) == Decimal("300") == Decimal(last["total"])
    assert last["ended_at"] is not None
    assert await mismatched_replays(workflow.engine) == []
