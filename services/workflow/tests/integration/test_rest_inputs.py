"""What the workflow refuses at its edges, against the real broker and PostgreSQL (issue 21):
amounts that cannot be negative, text PostgreSQL cannot store, arrangements due in the
past. Refused input is a dead letter on Kafka and a 422 problem naming the field on REST."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.envelope import Envelope
from collections_kit.topics import Topic
from scripts import lending
from tests.support import eventually, read_topic

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


def fields_named(problem: dict[str, Any]) -> set[str]:
    return {str(e["loc"][-1]) for e in problem.get("errors", []) if e.get("loc")} | {
        str(e.get("field")) for e in problem.get("errors", [])
    }


async def test_a_negative_outstanding_is_dead_lettered_and_opens_no_case(
    api: httpx.AsyncClient,
    lender: lending.Lender,
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    negative = lending.overdue("L-negative", Decimal("5000.00"))
    topic, key, value, headers = lending.record_for(negative)
    value = value.replace(b'"outstanding_balance":"5000.00"', b'"outstanding_balance":"-5000.00"')
    await lender.producer.send_and_wait(topic_prefix + topic, key=key, value=value, headers=headers)
    await lender.publish(lending.overdue("L-after-negative", Decimal("100.00")))
    assert await eventually(lambda: case_of(api, "L-after-negative"))

    async def dead_letter() -> c.DeadLetter | None:
        for e in await read_topic(stack["kafka_bootstrap"], topic_prefix + Topic.DLQ.value):
            if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter):
                return e.data
        return None

    letter = await eventually(dead_letter)
    assert letter.error_kind == "invalid"
    assert "outstanding_balance" in letter.reason
    assert await case_of(api, "L-negative") is None


async def test_a_negative_instalment_is_a_422_naming_the_field(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await lender.publish(lending.overdue("L-neg-plan", Decimal("1000.00")))
    assert await eventually(lambda: case_of(api, "L-neg-plan"))
    due = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    for body in (
        {"kind": "promise_to_pay", "schedule": [{"due_at": due, "amount": "-300"}]},
        {
            "kind": "promise_to_pay",
            "schedule": [{"due_at": due, "amount": "300"}],
            "interest_reduction": "-1",
        },
    ):
        response = await post(api, "L-neg-plan", "arrangements", body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "negative" in response.text


async def test_an_instalment_due_before_today_in_the_borrowers_zone_is_a_422(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """A plan due in the past was accepted, and a timer broke it at once: formal notice."""
    await lender.publish(
        lending.overdue("L-past-plan", Decimal("1000.00"), tz="Pacific/Kiritimati")
    )
    assert await eventually(lambda: case_of(api, "L-past-plan"))
    now = datetime.now(UTC)
    later = (now + timedelta(days=30)).isoformat()
    there = ZoneInfo("Pacific/Kiritimati")
    yesterday_there = (now - timedelta(days=1)).isoformat()
    response = await post(
        api,
        "L-past-plan",
        "arrangements",
        {
            "kind": "instalment_plan",
            "schedule": [
                {"due_at": yesterday_there, "amount": "100"},
                {"due_at": later, "amount": "200"},
            ],
        },
    )
    assert response.status_code == 422, response.text
    assert ["body", "schedule", 0, "due_at"] in [e["loc"] for e in response.json()["errors"]]
    case = await case_of(api, "L-past-plan")
    assert case is not None
    assert case["arrangement"] is None
    assert case["stage"] == "warning"
    # The first minute of today in the borrower's zone (already past there) is on time.
    midnight_there = datetime.combine(now.astimezone(there).date(), time(0, 1), tzinfo=there)
    on_time = await post(
        api,
        "L-past-plan",
        "arrangements",
        {
            "kind": "instalment_plan",
            "schedule": [
                {"due_at": midnight_there.isoformat(), "amount": "100"},
                {"due_at": later, "amount": "200"},
            ],
        },
    )
    assert on_time.status_code == 200, on_time.text


async def test_the_openapi_examples_of_arrangements_are_accepted(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """The document's own example had fixed dates that passed, and broke the case at once."""
    await lender.publish(lending.overdue("L-example", Decimal("20000.00")))
    assert await eventually(lambda: case_of(api, "L-example"))
    doc = (await api.get("/openapi.json")).json()
    examples = doc["components"]["schemas"]["ArrangementRequest"]["examples"]
    for example in examples:
        # Dated far ahead, so the committed document does not go stale with the calendar.
        dues = [datetime.fromisoformat(i["due_at"]) for i in example["schedule"]]
        assert min(dues) > datetime.now(UTC) + timedelta(days=3650), dues
        response = await post(api, "L-example", "arrangements", example)
        assert response.status_code == 200, response.text
        assert response.json()["arrangement"] is not None


async def test_amounts_are_written_in_the_currencys_minor_unit(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """Stored as NUMERIC(20, 6), amounts came back as "500.000000" (README: "1234.50")."""
    await lender.publish(lending.overdue("L-yuan", Decimal("1234.5")))
    await lender.publish(lending.overdue("L-yen", Decimal("500"), currency="JPY", tz="Asia/Tokyo"))
    yuan = await eventually(lambda: case_of(api, "L-yuan"))
    yen = await eventually(lambda: case_of(api, "L-yen"))
    assert (yuan["outstanding"], yuan["amount_overdue"]) == ("1234.50", "123.45")
    assert (yen["outstanding"], yen["amount_overdue"]) == ("500", "50")
    listed = (await api.get("/v1/cases", headers=READ)).json()["cases"]
    assert {c["loan_id"]: c["outstanding"] for c in listed} == {"L-yuan": "1234.50", "L-yen": "500"}


async def test_a_405_lists_the_allowed_methods(api: httpx.AsyncClient) -> None:
    """It carried an empty Allow header."""
    for method, path, allowed in (
        ("DELETE", "/v1/cases", "GET"),
        ("GET", "/v1/cases/L-1/holds", "POST"),
        ("PUT", "/v1/cases/L-1", "GET"),
    ):
        response = await api.request(method, path, headers=WRITE)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["Allow"] == allowed, (method, path)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_without_a_token_any_request_is_a_401_before_its_input_is_judged(
    api: httpx.AsyncClient,
) -> None:
    """A malformed body without a token got 400/422: authentication comes first."""
    key = {"Idempotency-Key": str(uuid.uuid4())}
    for headers, content in (
        (key, b"not json{"),
        (key, b'{"kind": 7}'),
        ({}, b"{}"),
        (key, b'{"reason": "a\\u0000b"}'),
    ):
        response = await api.post(
            "/v1/cases/L-1/holds",
            content=content,
            headers={"content-type": "application/json", **headers},
        )
        assert response.status_code == 401, (content, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    listed = await api.get("/v1/cases", params={"after": "a\x00b", "limit": "x"})
    assert listed.status_code == 401, listed.text
    wrong = await api.post(
        "/v1/cases/L-1/holds",
        content=b"not json{",
        headers={
            "content-type": "application/json",
            **key,
            **dev_headers(["cases:read"], subject="reader"),
        },
    )
    assert wrong.status_code == 403, wrong.text


async def test_empty_query_values_are_taken_as_absent(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """The README's `GET /v1/cases?stage=&status=...`, taken literally, was refused."""
    await lender.publish(lending.overdue("L-empty-query", Decimal("100.00")))
    assert await eventually(lambda: case_of(api, "L-empty-query"))
    response = await api.get("/v1/cases?stage=&status=&dpd_min=&after=&limit=10", headers=READ)
    assert response.status_code == 200, response.text
    assert [c["loan_id"] for c in response.json()["cases"]] == ["L-empty-query"]
    filtered = await api.get("/v1/cases?stage=&status=open", headers=READ)
    assert filtered.status_code == 200, filtered.text
    assert len(filtered.json()["cases"]) == 1


async def test_a_jurisdiction_without_a_policy_is_dead_lettered_and_opens_no_case(
    api: httpx.AsyncClient,
    lender: lending.Lender,
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    """The contract takes any ISO 3166-1 alpha-2 shape; which ones a service acts for is
    its policy data."""
    await lender.publish(
        lending.overdue("L-france", Decimal("100.00"), jurisdiction="FR", tz="Europe/Paris")
    )
    await lender.publish(lending.overdue("L-after-france", Decimal("100.00")))
    assert await eventually(lambda: case_of(api, "L-after-france"))

    async def dead_letter() -> c.DeadLetter | None:
        for e in await read_topic(stack["kafka_bootstrap"], topic_prefix + Topic.DLQ.value):
            if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter):
                return e.data
        return None

    letter = await eventually(dead_letter)
    assert letter.error_kind == "invalid"
    assert letter.reason == "jurisdiction FR has no policy"
    assert await case_of(api, "L-france") is None
