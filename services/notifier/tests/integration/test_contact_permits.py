"""Contact permits on the real stack: the notifier's runtime on the real PostgreSQL and
Kafka (commands, repayments and case events arrive over the broker), its REST API called
with collectors' and agencies' tokens. The permits count in the caps automated contacts
count in: one engine, one attempt log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import FixedClock
from collections_kit.runtime import Runtime
from notifier.adapters.tables import (
    case_closures,
    contact_attempts,
    contact_permits,
    dispatches,
    loan_confirmations,
    repayments,
)
from notifier.app.repayment_gate import RepaymentGate
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from scripts import lending
from tests.support import eventually, migrate

# 10:00 in Shanghai.
TEN_SH = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
CN_PHONE = "+8613812341234"
COLLECTOR = ["contacts:permit", "collections:work"]
AGENCY = ["contacts:permit", "collections:agency"]


@pytest.fixture
async def live(
    database_url: str, topic_prefix: str, stack: dict[str, str], lender: lending.Lender
) -> AsyncIterator[tuple[Runtime, lending.Lender, FixedClock]]:
    await migrate(bootstrap.MIGRATIONS, database_url, "notifier")
    clock = FixedClock(TEN_SH)
    settings = NotifierSettings(
        database_url=database_url,
        topic_prefix=topic_prefix,
        kafka_bootstrap=stack["kafka_bootstrap"],
        dispatch_safety_poll_s=0.2,
        # Generous on a busy test machine: a gate closed for a moment would refuse a permit
        # (repayments_lagging), which is right, but not what these tests are about.
        repayment_gate_max_lag_ms=10_000,
    )
    runtime = bootstrap.build_runtime(settings, clock=clock)
    await runtime.start()
    try:
        # Permits wait for a current view of repayments, as dispatch does.
        gate: RepaymentGate = runtime.state["repayment_gate"]
        await eventually(gate.is_open)
        yield runtime, lender, clock
    finally:
        await runtime.stop()


@asynccontextmanager
async def as_(
    runtime: Runtime, scopes: list[str], subject: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = bootstrap.create_app(runtime, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://notifier",
        headers=dev_headers(scopes, subject),
    ) as http:
        yield http


def command(
    command_id: str, channel: str, *, at: datetime, loan_id: str = "L-CN"
) -> c.ContactCommand:
    return c.ContactCommand(
        command_id=command_id,
        intent_id=f"i-{command_id}",
        case_id=f"c-{loan_id}",
        loan_id=loan_id,
        borrower_id="B-CN",
        recipient="debtor",
        channel=channel,
        stage="formal_notice",
        template="formal-notice",
        currency="CNY",
        amount_due=Decimal("990.00"),
        confirmation_id="conf-1",
        ledger_watermark=3,
        confirmed_at=at - timedelta(minutes=1),
        confirmation_valid_until=at + timedelta(minutes=30),
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        issued_at=at - timedelta(minutes=1),
    )


async def a_case(runtime: Runtime, lender: lending.Lender, at: datetime) -> None:
    """Contact details over REST, and the workflow's contact command over Kafka."""
    async with as_(runtime, ["contacts:write"], "ops") as http:
        response = await http.put(
            "/v1/borrowers/B-CN/contact-details", json={"language": "zh-CN", "phone": CN_PHONE}
        )
        assert response.status_code == 204, response.text
    await lender.publish(command("C-1", "sms", at=at))
    await eventually(lambda: _stored(runtime, "C-1"))


async def _stored(runtime: Runtime, command_id: str) -> bool:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(
            select(dispatches.c.command_id).where(dispatches.c.command_id == command_id)
        )
    return found is not None


async def _closed(runtime: Runtime) -> bool:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(select(func.count()).select_from(case_closures))
    return bool(found)


async def _repayment_held(runtime: Runtime, repayment_id: str) -> bool:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(
            select(repayments.c.repayment_id).where(repayments.c.repayment_id == repayment_id)
        )
    return found is not None


async def ask(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post(
        "/v1/contact-permits",
        json={"loan_id": "L-CN", "person": "debtor", "channel": "voice", **body},
    )


async def counted(runtime: Runtime) -> list[tuple[str, str, str, str | None]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(
                contact_attempts.c.command_id,
                contact_attempts.c.result,
                contact_attempts.c.actor_kind,
                contact_attempts.c.actor_id,
            )
            .where(contact_attempts.c.channel == "voice")
            .order_by(contact_attempts.c.attempted_at, contact_attempts.c.command_id)
        )
        return [(r.command_id, r.result, r.actor_kind, r.actor_id) for r in rows]


async def test_a_repayment_over_kafka_refuses_the_collectors_next_permit_with_reason_repaid(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now())
    async with as_(runtime, COLLECTOR, "col-1") as http:
        granted = await ask(http)
        assert granted.status_code == 201, granted.text
        permit = granted.json()
        assert permit["decision"] == "granted"
        assert permit["actor"] == {"kind": "collector", "id": "col-1", "source": "token"}
        expires_at = datetime.fromisoformat(permit["expires_at"])
        assert expires_at == clock.now() + timedelta(minutes=5)
        # Reported twice (a retry): it counts once.
        for _ in range(2):
            done = await http.post(
                f"/v1/contact-permits/{permit['permit_id']}/result", json={"result": "connected"}
            )
            assert done.status_code == 200, done.text
        assert done.json()["result"] == "connected"
        assert await counted(runtime) == [(permit["permit_id"], "connected", "collector", "col-1")]

        # The borrower repays (the lending system, over Kafka) while the collector works on.
        clock.set(clock.now() + timedelta(minutes=2))
        await lender.publish(
            c.RepaymentReceived(
                repayment_id="R-1",
                loan_id="L-CN",
                currency="CNY",
                amount=Decimal("990.00"),
                outstanding_balance_after=Decimal("0"),
                received_at=clock.now() - timedelta(seconds=30),
            )
        )

        # Once the notifier holds the repayment, the next permit is refused for it. (Asking
        # in a loop until some refusal came was flaky: on a slow machine the grants made
        # while the repayment was still on its way reached the CN cap on connected calls
        # first, a right refusal, but not the one under test.)
        await eventually(lambda: _repayment_held(runtime, "R-1"))
        answer = await ask(http)
        assert answer.status_code == 200, answer.text
        refusal: dict[str, Any] = answer.json()
    assert (refusal["decision"], refusal["reason"], refusal["rule"]) == (
        "refused",
        "repaid",
        "repayment_recheck",
    )
    assert refusal["expires_at"] is None
    # Each grant counts one attempt; a refusal counts none.
    async with runtime.engine.connect() as conn:
        grants = await conn.scalar(
            select(func.count())
            .select_from(contact_permits)
            .where(contact_permits.c.decision == "granted")
        )
    assert len(await counted(runtime)) == grants


async def test_cn_three_connected_calls_by_a_collector_and_two_agencies_refuse_the_fourth(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now())
    callers = [(COLLECTOR, "col-1"), (AGENCY, "agency-A"), (AGENCY, "agency-B")]
    permits: list[str] = []
    for scopes, subject in callers:
        async with as_(runtime, scopes, subject) as http:
            answer = await ask(http)
            assert answer.status_code == 201, answer.text
            permits.append(answer.json()["permit_id"])
            done = await http.post(
                f"/v1/contact-permits/{permits[-1]}/result", json={"result": "connected"}
            )
            assert done.status_code == 200, done.text
        clock.set(clock.now() + timedelta(minutes=5))
    assert [(k, a) for _, _, k, a in await counted(runtime)] == [
        ("collector", "col-1"),
        ("agency", "agency-A"),
        ("agency", "agency-B"),
    ]

    async with as_(runtime, COLLECTOR, "col-1") as http:
        fourth = await ask(http)
        assert fourth.status_code == 200, fourth.text
        body = fourth.json()
        assert (body["decision"], body["reason"], body["rule"]) == (
            "refused",
            "cap_reached",
            "CN.connected_calls_per_day",
        )
        assert body["retry_after"] == "2026-11-24T00:00:00Z"  # 08:00 tomorrow in Shanghai
        # Someone else's permit: only its holder reports its result.
        theirs = await http.post(
            f"/v1/contact-permits/{permits[1]}/result", json={"result": "connected"}
        )
        assert theirs.status_code == 403
        assert theirs.headers["content-type"] == "application/problem+json"
        changed = await http.post(
            f"/v1/contact-permits/{permits[0]}/result", json={"result": "conversation"}
        )
        assert changed.status_code == 409
        unknown = await http.post(
            "/v1/contact-permits/permit-nope/result", json={"result": "connected"}
        )
        assert unknown.status_code == 404
        refused_one = await http.post(
            f"/v1/contact-permits/{body['permit_id']}/result", json={"result": "connected"}
        )
        assert refused_one.status_code == 409

    async with as_(runtime, ["cases:read", "admin"], "supervisor") as http:
        listed = (await http.get("/v1/contact-permits", params={"loan_id": "L-CN"})).json()
        assert [(p["decision"], p["actor"]["id"], p["result"]) for p in listed] == [
            ("granted", "col-1", "connected"),
            ("granted", "agency-A", "connected"),
            ("granted", "agency-B", "connected"),
            ("refused", "col-1", None),
        ]
        # The list says what the answers said: the confirmation each rested on, and for a
        # refusal what happens next and when to ask again.
        assert {p["confirmation_id"] for p in listed} == {"conf-1"}
        assert (listed[-1]["reason"], listed[-1]["retry_after"]) == (
            "cap_reached",
            body["retry_after"],
        )
        summary = (await http.get("/v1/contact-permits/summary")).json()
        assert {(r["decision"], r["reason"], r["actor_kind"], r["count"]) for r in summary} == {
            ("granted", "all_checks_passed", "agency", 2),
            ("granted", "all_checks_passed", "collector", 1),
            ("refused", "cap_reached", "collector", 1),
        }

    # The automated calls count the people's: the workflow's call waits for tomorrow too.
    await lender.publish(command("V-auto", "voice", at=clock.now()))

    async def deferred() -> tuple[str, str, str] | None:
        async with runtime.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(dispatches.c.status, dispatches.c.reason, dispatches.c.rule).where(
                        dispatches.c.command_id == "V-auto"
                    )
                )
            ).first()
        return (row.status, row.reason, row.rule) if row and row.status != "pending" else None

    assert await eventually(deferred) == (
        "deferred",
        "frequency_cap",
        "CN.connected_calls_per_day",
    )


async def test_a_permit_result_after_its_window_is_refused_and_counts_as_unknown(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now())
    async with as_(runtime, COLLECTOR, "col-1") as http:
        permit = (await ask(http)).json()
        assert permit["decision"] == "granted"
        clock.set(clock.now() + timedelta(hours=2))
        late = await http.post(
            f"/v1/contact-permits/{permit['permit_id']}/result", json={"result": "unanswered"}
        )
        assert late.status_code == 410
        assert late.json()["type"].endswith("/permit-expired")
        # The next permit's decision settles it as unknown: counted, as the worst case.
        await lender.publish(command("C-2", "sms", at=clock.now()))
        await eventually(lambda: _stored(runtime, "C-2"))
        assert (await ask(http)).json()["decision"] == "granted"
    assert (await counted(runtime))[0][:2] == (permit["permit_id"], "unknown")


async def test_a_permit_for_a_closed_or_unknown_case_is_a_problem_and_changes_nothing(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now())
    await lender.publish(
        c.CaseClosed(
            case_id="c-L-CN",
            loan_id="L-CN",
            outcome="repaid",
            cause="repaid in full",
            closed_at=clock.now(),
        )
    )
    await eventually(lambda: _closed(runtime))
    async with as_(runtime, COLLECTOR, "col-1") as http:
        answer = await ask(http)
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["type"].endswith("/case-closed")
        assert "case_closed" in problem["detail"]
        unknown = await ask(http, loan_id="L-nobody")
        assert unknown.status_code == 404
        assert unknown.json()["type"].endswith("/case-unknown")
        mismatch = await ask(http, actor={"kind": "agency", "id": "agency-A"})
        assert mismatch.status_code == 403
        bad = await ask(http, person="neighbour")
        assert bad.status_code == 422
    async with as_(runtime, ["contacts:permit"], "dialer") as http:
        # A delegate's token names nobody: the body must.
        assert (await ask(http)).status_code == 422
    async with runtime.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(contact_permits)) == 0
    assert await counted(runtime) == []


async def test_two_people_asking_at_once_never_both_squeeze_under_a_cap(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now())
    async with as_(runtime, COLLECTOR, "col-1") as http:
        for _ in range(2):
            permit = (await ask(http)).json()
            done = await http.post(
                f"/v1/contact-permits/{permit['permit_id']}/result", json={"result": "connected"}
            )
            assert done.status_code == 200, done.text
    # One connected call left today: a collector and an agency ask in the same instant.
    async with as_(runtime, COLLECTOR, "col-2") as one, as_(runtime, AGENCY, "agency-A") as two:
        answers = await asyncio.gather(*(ask(one if n % 2 else two) for n in range(6)))
    decisions = sorted((a.json()["decision"], a.json()["reason"]) for a in answers)
    # The per-person lock serialises them: the first grant counts before the next decides.
    assert decisions == [("granted", "all_checks_passed")] + [("refused", "cap_reached")] * 5
    assert sorted(r for _, r, _, _ in await counted(runtime)) == [
        "connected",
        "connected",
        "pending",
    ]


async def test_a_fresh_confirmation_over_kafka_anchors_a_permit_whose_command_is_old(
    live: tuple[Runtime, lending.Lender, FixedClock],
) -> None:
    """The case's last command was confirmed long ago: refused balance_unconfirmed; the
    first refusal asks the workflow for a confirmation (``confirmation_asked``), the next,
    once the workflow's check is seen, says it is on its way; each with a ``retry_after``.
    The answer's confirmation grants the next permit, and a repayment after it refuses
    with reason repaid."""
    runtime, lender, clock = live
    await a_case(runtime, lender, clock.now() - timedelta(hours=2))
    async with as_(runtime, COLLECTOR, "col-1") as http:
        asked = (await ask(http)).json()
        assert (asked["reason"], asked["detail"], asked["retry_after"]) == (
            "balance_unconfirmed",
            "confirmation_asked",
            "2026-11-23T02:00:03Z",
        )
        # Remembered: the next refusal does not ask again while this request stands.
        async with runtime.engine.connect() as conn:
            asked_at = await conn.scalar(
                select(loan_confirmations.c.asked_at).where(loan_confirmations.c.loan_id == "L-CN")
            )
        assert asked_at == clock.now()

        check = c.BalanceCheckRequested(
            check_id="permit-check:lease:L1:0",
            loan_id="L-CN",
            currency="CNY",
            expected_outstanding=Decimal("990.00"),
            requested_at=clock.now(),
        )
        await lender.publish(check)

        async def waiting() -> dict[str, Any] | None:
            body: dict[str, Any] = (await ask(http)).json()
            return body if body["detail"] == "confirmation_requested" else None

        on_its_way = await eventually(waiting)
        assert on_its_way["reason"] == "balance_unconfirmed"
        assert datetime.fromisoformat(on_its_way["retry_after"]) == clock.now() + timedelta(
            seconds=3
        )

        await lender.publish(
            c.BalanceConfirmed(
                check_id=check.check_id,
                loan_id="L-CN",
                confirmation_id="conf-lease",
                currency="CNY",
                confirmed_outstanding=Decimal("990.00"),
                ledger_watermark=4,
                confirmed_at=clock.now(),
                valid_until=clock.now() + timedelta(minutes=30),
                expected_outstanding=Decimal("990.00"),
            )
        )

        async def granted() -> dict[str, Any] | None:
            answer = await ask(http)
            return answer.json() if answer.status_code == 201 else None

        permit = await eventually(granted)
        async with runtime.engine.connect() as conn:
            rested_on = await conn.scalar(
                select(contact_permits.c.confirmation_id).where(
                    contact_permits.c.permit_id == permit["permit_id"]
                )
            )
        assert rested_on == "conf-lease"
        assert permit["confirmation_id"] == "conf-lease"

        clock.set(clock.now() + timedelta(minutes=1))
        await lender.publish(
            c.RepaymentReceived(
                repayment_id="R-lease",
                loan_id="L-CN",
                currency="CNY",
                amount=Decimal("100.00"),
                outstanding_balance_after=Decimal("890.00"),
                received_at=clock.now() - timedelta(seconds=10),
            )
        )
        await eventually(lambda: _repayment_held(runtime, "R-lease"))
        refusal = (await ask(http)).json()
    assert (refusal["decision"], refusal["reason"], refusal["rule"]) == (
        "refused",
        "repaid",
        "repayment_recheck",
    )
