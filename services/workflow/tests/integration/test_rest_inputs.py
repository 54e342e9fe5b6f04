"""What the workflow refuses at its edges, against the real broker and PostgreSQL (issue 21):
amounts that cannot be negative, text PostgreSQL cannot store, arrangements due in the
past. Refused input is a dead letter on Kafka and a 422 problem naming the field on REST."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.envelope import Envelope
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from scripts import lending
from tests.support import eventually, read_topic

READ = dev_headers(["cases:read"], subject="reader")
WRITE = dev_headers(["cases:read", "cases:write"], subject="agent:7")


async def post(api: httpx.AsyncClient, loan_id: str, path: str,
               body: dict[str, Any]) -> httpx.Response:
    return await api.post(f"/v1/cases/{loan_id}/{path}", json=body,
                          headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())})


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


def fields_named(problem: dict[str, Any]) -> set[str]:
    return {str(e["loc"][-1]) for e in problem.get("errors", [])
            if e.get("loc")} | {str(e.get("field")) for e in problem.get("errors", [])}


async def test_a_negative_outstanding_is_dead_lettered_and_opens_no_case(
        workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender,
        stack: dict[str, str], topic_prefix: str) -> None:
    negative = lending.overdue("L-negative", Decimal("5000.00"))
    topic, key, value, headers = lending.record_for(negative)
    value = value.replace(b'"outstanding_balance":"5000.00"', b'"outstanding_balance":"-5000.00"')
    await lender.producer.send_and_wait(topic_prefix + topic, key=key, value=value,
                                        headers=headers)
    await lender.publish(lending.overdue("L-after-negative", Decimal("100.00")))
    assert await eventually(lambda: case_of(api, "L-after-negative"))

    async def dead_letter() -> c.DeadLetter | None:
        for e in await read_topic(stack["kafka_bootstrap"], topic_prefix + Topic.DLQ.value):
            if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter):
                return e.data
        return None
    letter = await eventually(dead_letter)
    assert letter.error_kind == "invalid" and "outstanding_balance" in letter.reason
    assert await case_of(api, "L-negative") is None


async def test_a_negative_instalment_is_a_422_naming_the_field(
        workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender) -> None:
    await lender.publish(lending.overdue("L-neg-plan", Decimal("1000.00")))
    assert await eventually(lambda: case_of(api, "L-neg-plan"))
    due = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    for body in ({"kind": "promise_to_pay", "schedule": [{"due_at": due, "amount": "-300"}]},
                 {"kind": "promise_to_pay", "schedule": [{"due_at": due, "amount": "300"}],
                  "interest_reduction": "-1"}):
        response = await post(api, "L-neg-plan", "arrangements", body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "negative" in response.text
