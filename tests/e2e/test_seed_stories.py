"""The seed stories, through Kafka and the REST API, with the real broker and database.

Workflow and ledger-sync run in-process (their real runtimes) so that a test clock can move
time forward for the durable timers; the REST calls go through the real ASGI app.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import httpx
import pytest

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.envelope import Envelope
from collections_kit.topics import Topic
from ledger_sync.entrypoints import bootstrap as ledger_boot
from ledger_sync.settings import LedgerSyncSettings
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, mismatched_replays, read_topic, running
from workflow.domain.policy import DEFAULT_POLICY
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings


@dataclass
class World:
    http: httpx.AsyncClient
    lender: lending.Lender
    clock: OffsetClock
    stack: dict[str, str]
    prefix: str

    async def case(self, loan: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/cases/{loan}")
        return dict(response.json()) if response.status_code == 200 else {}

    async def kinds(self, loan: str) -> list[str]:
        body = (await self.http.get(f"/v1/cases/{loan}/timeline?limit=500")).json()
        return [e["kind"] for e in body.get("entries", [])]

    async def post(
        self, loan: str, path: str, body: dict[str, Any], key: str | None = None
    ) -> httpx.Response:
        return await self.http.post(
            f"/v1/cases/{loan}/{path}",
            json=body,
            headers={"Idempotency-Key": key or str(uuid.uuid4())},
        )

    async def topic(self, topic: Topic) -> list[Envelope]:
        found = await read_topic(self.stack["kafka_bootstrap"], self.prefix + topic.value)
        return [e for e in found if isinstance(e, Envelope)]

    async def open_contacted_case(self, loan: str, amount: Decimal) -> None:
        await self.lender.publish(lending.disbursement(loan, amount))
        await self.lender.publish(lending.overdue(loan, amount))
        await eventually(lambda: self._commanded(loan))

    async def _commanded(self, loan: str) -> bool:
        case = await self.case(loan)
        return bool(case) and all(i["status"] == "commanded" for i in case["intents"])


@pytest.fixture
async def world(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[World]:
    common = {
        "database_url": database_url,
        "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix,
    }
    wf_settings = WorkflowSettings.model_validate(common)
    ls_settings = LedgerSyncSettings.model_validate(common)
    await migrate(workflow_boot.MIGRATIONS, database_url, wf_settings.db_schema)
    await migrate(ledger_boot.MIGRATIONS, database_url, ls_settings.db_schema)
    clock = OffsetClock()
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        async with (
            running(workflow_boot.build_runtime(wf_settings, clock=clock)) as wf,
            running(ledger_boot.build_runtime(ls_settings, clock=clock)),
        ):
            app = workflow_boot.create_app(wf, manage_runtime=False)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://workflow",
                headers=dev_headers(subject="agent:test"),
            ) as http:
                yield World(http, lending.Lender(kafka, topic_prefix), clock, stack, topic_prefix)
            # Every case equals the fold of the pure decisions over its journal.
            assert await mismatched_replays(wf.engine) == []
    finally:
        await kafka.stop()


async def test_the_ten_percent_down_six_month_plan_kept_to_the_end(world: World) -> None:
    loan, owed = "L-plan", Decimal("520000.00")
    await world.open_contacted_case(loan, owed)
    start = datetime.now(UTC) + world.clock.offset
    down, monthly = Decimal("50000.00"), Decimal("75000.00")
    schedule = [{"due_at": (start + timedelta(days=1)).isoformat(), "amount": str(down)}] + [
        {"due_at": (start + timedelta(days=30 * (n + 1))).isoformat(), "amount": str(monthly)}
        for n in range(6)
    ]
    # An amount no amount column holds is refused as invalid, not failed in the database.
    oversized = await world.post(
        loan,
        "arrangements",
        {
            "kind": "instalment_plan",
            "note": "a typo in the amount",
            "schedule": [{**schedule[0], "amount": "100000000000000.00"}],
        },
    )
    assert oversized.status_code == 422, oversized.text
    assert oversized.headers["content-type"].startswith("application/problem+json")
    response = await world.post(
        loan,
        "arrangements",
        {
            "kind": "instalment_plan",
            "schedule": schedule,
            "interest_reduction": "20000.00",
            "note": "10% now, the rest over 6 months",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["phase"] == "arranged"

    paid = Decimal("0")
    for n, payment in enumerate([down] + [monthly] * 6):
        owed -= payment
        paid += payment
        await world.lender.publish(
            lending.repayment(loan, payment, owed, repayment_id=f"R-plan-{n}")
        )
        if n < 6:
            # The money is in before the due date passes (moving the clock at once raced
            # the consumer: a timer firing first saw the instalment unpaid).
            await eventually(partial(_paid_at_least, world, loan, paid))
            world.clock.advance(timedelta(days=30) if n else timedelta(days=2))
            await eventually(partial(_count, world, loan, "instalment_kept", n + 1))
    case = await eventually(lambda: _closed(world, loan))
    assert case["exit"] == "settled"
    kinds = await world.kinds(loan)
    assert "arrangement_broken" not in kinds
    assert kinds.count("instalment_kept") == 6


async def test_a_hold_then_resume_reconfirms_before_any_contact(world: World) -> None:
    loan = "L-hold"
    await world.open_contacted_case(loan, Decimal("3000.00"))
    before = {
        e.data.command_id
        for e in await world.topic(Topic.CONTACT_COMMANDS)
        if isinstance(e.data, c.ContactCommand)
    }
    held = await world.post(loan, "holds", {"kind": "hardship", "reason": "borrower hospitalised"})
    assert held.status_code == 200
    assert held.json()["status"] == "held"
    await eventually(lambda: _has_cancel(world, loan, "held"))
    early = await world.post(loan, "escalations", {"kind": "manual", "reason": "push it"})
    assert early.status_code == 409
    assert early.headers["content-type"].startswith("application/problem+json")

    resumed = await world.post(loan, "resume", {"reason": "discharged, ready to talk"})
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "open"
    await eventually(lambda: world._commanded(loan))
    kinds = await world.kinds(loan)
    after_resume = kinds[kinds.index("case_resumed") :]
    # Re-confirmed: new intents, then commands, only after the resume.
    assert after_resume.index("contact_intent_recorded") < after_resume.index("contact_commanded")
    after = [
        e.data
        for e in await world.topic(Topic.CONTACT_COMMANDS)
        if isinstance(e.data, c.ContactCommand) and e.data.command_id not in before
    ]
    assert after
    assert {cmd.loan_id for cmd in after} == {loan}
    events = [type(e.data).__name__ for e in await world.topic(Topic.CASE_EVENTS)]
    assert "CaseHeld" in events
    assert "CaseResumed" in events


async def test_refusing_to_communicate_takes_the_case_to_litigation(world: World) -> None:
    loan = "L-silent"
    await world.open_contacted_case(loan, Decimal("8000.00"))
    now = datetime.now(UTC)
    for n in range(DEFAULT_POLICY.unanswered_limit):
        await world.lender.publish(
            c.ContactOutcome(
                command_id=f"cmd-{n}",
                intent_id=f"intent-{n}",
                loan_id=loan,
                channel="voice",
                outcome="unanswered",
                occurred_at=now,
            )
        )
    case = await eventually(lambda: _stage(world, loan, "litigation"))
    assert case["status"] == "open"
    changes = [
        e.data
        for e in await world.topic(Topic.CASE_EVENTS)
        if isinstance(e.data, c.CaseStageChanged) and e.data.loan_id == loan
    ]
    assert [(x.to_stage, x.cause) for x in changes] == [("litigation", "refused_to_communicate")]


async def test_fraud_goes_to_litigation_and_an_unhonoured_judgment_to_enforcement(
    world: World,
) -> None:
    loan = "L-fraud"
    await world.open_contacted_case(loan, Decimal("12000.00"))
    key = "fraud-escalation-0001"
    first = await world.post(
        loan, "escalations", {"kind": "fraud", "reason": "forged payslips"}, key
    )
    assert first.status_code == 200
    assert first.json()["stage"] == "litigation"
    replay = await world.post(
        loan, "escalations", {"kind": "fraud", "reason": "forged payslips"}, key
    )
    assert replay.status_code == 200
    assert replay.json() == first.json()
    reused = await world.post(loan, "escalations", {"kind": "manual", "reason": "other"}, key)
    assert reused.status_code == 422

    early = await world.post(
        loan, "legal-milestones", {"milestone": "enforcement_applied", "reference": "E-1"}
    )
    assert early.status_code == 409
    for milestone in ("registered", "reviewed", "suit_filed", "judgment"):
        response = await world.post(
            loan, "legal-milestones", {"milestone": milestone, "reference": f"X-{milestone}"}
        )
        assert response.status_code == 200, response.text
    enforced = await world.post(
        loan, "legal-milestones", {"milestone": "enforcement_applied", "reference": "E-2"}
    )
    assert enforced.status_code == 200
    assert enforced.json()["stage"] == "enforcement"
    kinds = await world.kinds(loan)
    assert kinds.count("stage_changed") == 2  # one jump for fraud, one for enforcement


async def _count(world: World, loan: str, kind: str, n: int) -> bool:
    return (await world.kinds(loan)).count(kind) >= n


async def _paid_at_least(world: World, loan: str, amount: Decimal) -> bool:
    arrangement = (await world.case(loan)).get("arrangement") or {}
    return Decimal(str(arrangement.get("paid", "0"))) >= amount


async def _closed(world: World, loan: str) -> dict[str, Any] | None:
    case = await world.case(loan)
    return case if case.get("status") == "closed" else None


async def _stage(world: World, loan: str, stage: str) -> dict[str, Any] | None:
    case = await world.case(loan)
    return case if case.get("stage") == stage else None


async def _has_cancel(world: World, loan: str, reason: str) -> bool:
    return any(
        isinstance(e.data, c.ContactCancelled)
        and e.data.loan_id == loan
        and e.data.reason == reason
        for e in await world.topic(Topic.CONTACT_COMMANDS)
    )


async def test_resume_and_closure_need_cases_write_a_reason_and_show_the_actor(
    world: World,
) -> None:
    loan = "L-audit"
    await world.open_contacted_case(loan, Decimal("2000.00"))
    held = await world.post(loan, "holds", {"kind": "operator", "reason": "complaint review"})
    assert held.status_code == 200, held.text

    async def resume_as(headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
        return await world.http.post(
            f"/v1/cases/{loan}/resume",
            json=body,
            headers={"Idempotency-Key": str(uuid.uuid4()), **headers},
        )

    reason = {"reason": "complaint answered"}
    refusals = {
        "missing": (await resume_as({"Authorization": ""}, reason), 401),
        "expired": (await resume_as(dev_headers(["cases:write"], now=0), reason), 401),
        "wrong audience": (
            await resume_as(dev_headers(["cases:write"], audience="notifier"), reason),
            401,
        ),
        "read-only": (await resume_as(dev_headers(["cases:read", "admin"]), reason), 403),
        "no reason": (await resume_as(dev_headers(["cases:write"]), {}), 422),
        "blank reason": (await resume_as(dev_headers(["cases:write"]), {"reason": "   "}), 422),
    }
    for label, (response, status) in refusals.items():
        assert response.status_code == status, (label, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), label
    assert (await world.case(loan))["status"] == "held"

    resumed = await resume_as(dev_headers(["cases:write"], subject="agent:li.wei"), reason)
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "open"
    no_reason = await world.http.post(
        f"/v1/cases/{loan}/closure",
        json={"exit": "closed"},
        headers={
            "Idempotency-Key": str(uuid.uuid4()),
            **dev_headers(["cases:write"], subject="agent:li.wei"),
        },
    )
    assert no_reason.status_code == 422
    closed = await world.http.post(
        f"/v1/cases/{loan}/closure",
        json={"exit": "closed", "reason": "customer deceased"},
        headers={
            "Idempotency-Key": str(uuid.uuid4()),
            **dev_headers(["cases:write"], subject="agent:zhao.min"),
        },
    )
    assert closed.status_code == 200
    assert closed.json()["exit"] == "closed"

    body = (await world.http.get(f"/v1/cases/{loan}/timeline?limit=500")).json()
    by_kind = {e["kind"]: e for e in body["entries"]}
    assert by_kind["case_resumed"]["actor"] == "agent:li.wei"
    assert by_kind["case_resumed"]["detail"]["reason"] == "complaint answered"
    closure = next(e for e in body["entries"] if e["status_after"] == "closed")
    assert closure["actor"] == "agent:zhao.min"
    assert closure["detail"]["reason"] == "customer deceased"
    assert by_kind["case_held"]["actor"] == "agent:test"
