"""Proposals answered by the negotiation policy, against the real broker and PostgreSQL:
accepted becomes the plan in force, 5% down is countered with the policy's minimum, the
policy's number of refusals sends the case to litigation with the rule on the timeline, a
malformed proposal is a 422 naming the field with nothing recorded; an agency proposes only
for a case placed with it. Every case still equals the replay of its journal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually, migrate, mismatched_replays, running
from workflow.adapters.placement_file import load_placement_policy
from workflow.domain.policy import DEFAULT_POLICY
from workflow.entrypoints import bootstrap
from workflow.settings import WorkflowSettings

READ = dev_headers(["cases:read"], subject="reader")
PORTAL = dev_headers(["cases:write"], subject="borrower-portal")
COLLECTOR = dev_headers(["collections:work"], subject="collector:9")
OWED = Decimal("10000.00")
RULE = DEFAULT_POLICY.negotiation.unreasonable


def terms(down: str, months: int = 6, *, owed: Decimal = OWED, **extra: Any) -> dict[str, Any]:
    """``down`` tomorrow, the rest in ``months`` equal payments 30 days apart."""
    start = datetime.now(UTC) + timedelta(days=1)
    rest = owed - Decimal(down)
    each = (rest / months).quantize(Decimal("0.01"))
    amounts = [each] * (months - 1) + [rest - each * (months - 1)]
    return {
        "down_payment": {"due_at": start.isoformat(), "amount": down},
        "instalments": [
            {"due_at": (start + timedelta(days=30 * (k + 1))).isoformat(), "amount": str(a)}
            for k, a in enumerate(amounts)
        ],
        **extra,
    }


async def propose(
    api: httpx.AsyncClient, loan_id: str, body: dict[str, Any], headers: dict[str, str] = PORTAL
) -> httpx.Response:
    return await api.post(
        f"/v1/cases/{loan_id}/proposals",
        json=body,
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


async def timeline(api: httpx.AsyncClient, loan_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/cases/{loan_id}/timeline", headers=READ)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


async def open_case(api: httpx.AsyncClient, lender: lending.Lender, loan_id: str) -> None:
    await lender.publish(lending.overdue(loan_id, OWED))
    assert await eventually(lambda: case_of(api, loan_id))


async def test_ten_percent_down_and_six_months_is_accepted_and_the_plan_is_in_force(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await open_case(api, lender, "L-accept")
    response = await propose(api, "L-accept", terms("1000.00", note="10% now, 6 months"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["verdict"] == "accepted"
    assert answer["rules"] == []
    assert answer["floor"] == "1000.00"
    case = await case_of(api, "L-accept")
    assert case is not None
    assert case["phase"] == "arranged"
    plan = case["arrangement"]
    assert plan["kind"] == "instalment_plan"
    assert plan["total"] == "10000.00"
    assert plan["schedule"][0]["amount"] == "1000.00"
    assert len(plan["schedule"]) == 7
    assert plan["note"] == "10% now, 6 months"
    kinds = [e["kind"] for e in await timeline(api, "L-accept")]
    at = kinds.index("proposal_received")
    assert kinds[at : at + 3] == ["proposal_received", "proposal_accepted", "arrangement_recorded"]
    assert await mismatched_replays(workflow.engine) == []


async def test_five_percent_down_is_countered_with_the_policys_minimum(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await open_case(api, lender, "L-counter")
    response = await propose(api, "L-counter", terms("500.00"), COLLECTOR)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["verdict"] == "countered"
    assert [r["rule"] for r in answer["rules"]] == ["min_down_payment"]
    counter = answer["counter"]
    assert counter["down_payment"]["amount"] == "1000.00" == answer["floor"]
    paid = Decimal(counter["down_payment"]["amount"]) + sum(
        Decimal(i["amount"]) for i in counter["instalments"]
    )
    assert paid == OWED
    assert answer["approvable"] is True
    assert answer["case"]["arrangement"] is None
    entries = await timeline(api, "L-counter")
    received = next(e for e in entries if e["kind"] == "proposal_received")
    assert received["actor"] == "collector:9"
    assert received["detail"]["via"] == "collector"
    countered = next(e for e in entries if e["kind"] == "proposal_countered")
    assert countered["detail"]["counter"]["down_payment"]["amount"] == "1000.00"

    # Proposed back, the counter is accepted.
    back = {k: counter[k] for k in ("down_payment", "instalments", "waivers")}
    again = await propose(api, "L-counter", back, COLLECTOR)
    assert again.json()["verdict"] == "accepted", again.text
    assert await mismatched_replays(workflow.engine) == []


async def test_the_policys_number_of_refusals_sends_the_case_to_litigation(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await open_case(api, lender, "L-refused")
    for n in range(RULE.refusals):
        response = await propose(api, "L-refused", terms("200.00"))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["verdict"] == "refused"
        assert "refuse_below_floor_share" in {r["rule"] for r in answer["rules"]}
        last = n == RULE.refusals - 1
        assert (answer["unreasonable"] is not None) is last
        # Counted on the case until the rule fires; then the count starts again.
        assert len(answer["case"]["refused_proposals"]) == (0 if last else n + 1)
    assert answer["case"]["stage"] == "litigation"
    case = await case_of(api, "L-refused")
    assert case is not None
    assert case["stage"] == "litigation"
    entries = await timeline(api, "L-refused")
    changed = [e for e in entries if e["kind"] == "stage_changed"]
    assert changed[-1]["detail"]["trigger"] == "proposal_unreasonable"
    assert (
        f"{RULE.refusals} proposals refused within {RULE.period.days} days"
        in (changed[-1]["detail"]["why"])
    )
    refused = [e for e in entries if e["kind"] == "proposal_refused"]
    assert [e["detail"]["refusals"] for e in refused] == list(range(1, RULE.refusals + 1))
    assert await mismatched_replays(workflow.engine) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["down_payment"].update(amount="-5.00"), ["body", "down_payment", "amount"]),
        (
            lambda b: b["instalments"][2].update(due_at="2020-01-01T00:00:00Z"),
            ["body", "instalments", 2, "due_at"],
        ),
        (lambda b: b["instalments"].pop(), ["body", "instalments"]),
        (lambda b: b.update(waivers={"fees": "-1"}), ["body", "waivers", "fees"]),
    ],
    ids=["negative", "past", "not adding up", "negative waiver"],
)
async def test_a_malformed_proposal_names_the_field_and_records_nothing(
    api: httpx.AsyncClient,
    lender: lending.Lender,
    change: Any,
    field: list[Any],
) -> None:
    await open_case(api, lender, "L-bad")
    before = await timeline(api, "L-bad")
    body = terms("1000.00")
    change(body)
    response = await propose(api, "L-bad", body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert field in [e["loc"] for e in problem["errors"]], problem
    assert await timeline(api, "L-bad") == before
    case = await case_of(api, "L-bad")
    assert case is not None
    assert case["arrangement"] is None


async def test_a_case_that_is_not_placed_with_an_agency_is_forbidden_to_it(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await open_case(api, lender, "L-not-placed")
    agency = dev_headers(["collections:agency"], subject="agency-a")
    response = await propose(api, "L-not-placed", terms("1000.00"), agency)
    assert response.status_code == 403, response.text
    assert response.json()["type"].endswith("not-placed-with-agency")
    nobody = dev_headers(["cases:read"], subject="reader")
    assert (await propose(api, "L-not-placed", terms("1000.00"), nobody)).status_code == 403
    assert not [e for e in await timeline(api, "L-not-placed") if e["kind"].startswith("proposal")]


# --- an agency, for a case placed with it ---------------------------------------------------

PLACEMENTS = """
version = "placements/test"

[[tiers]]
tier = "primary"
stages = ["warning", "formal_notice", "guarantor_recourse"]
min_days_past_due = 1
min_balance = "100.00"
period_days = 90

[[tiers.agencies]]
agency = "agency-a"
share = 1
commission_rate = "0.25"
"""


@pytest.fixture
async def placing(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    tmp_path: Path,
    clock: OffsetClock,
) -> AsyncIterator[Runtime]:
    policy = tmp_path / "placements.toml"
    policy.write_text(PLACEMENTS)
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "placement_policy_file": policy,
        }
    )
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    async with running(bootstrap.build_runtime(config, clock=clock)) as runtime:
        yield runtime


async def test_an_agency_proposes_for_a_case_placed_with_it(
    placing: Runtime, lender: lending.Lender
) -> None:
    app = bootstrap.create_app(placing, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://workflow"
    ) as api:
        await open_case(api, lender, "L-placed")
        response = await propose(
            api,
            "L-placed",
            terms("1000.00"),
            dev_headers(["collections:agency"], subject="agency-a"),
        )
        assert response.status_code == 200, response.text
        assert response.json()["verdict"] == "accepted"
        other = dev_headers(["collections:agency"], subject="agency-b")
        refused = await propose(api, "L-placed", terms("1000.00"), other)
        assert refused.status_code == 403, refused.text
        received = next(
            e for e in await timeline(api, "L-placed") if e["kind"] == "proposal_received"
        )
        assert received["detail"]["via"] == "agency"
        assert received["actor"] == "agency-a"
    policy = load_placement_policy(placing.settings.placement_policy_file)  # type: ignore[attr-defined]
    assert await mismatched_replays(placing.engine, policy) == []
