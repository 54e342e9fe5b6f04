"""Money facts against the real broker and PostgreSQL: what the workflow knows of a loan's
repayments, whatever order the topics are consumed in, and what a late answer may change."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from collections_kit import contract as c
from collections_kit.outbox import Tx
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from scripts import lending
from tests.support import eventually, mismatched_replays, read_topic
from workflow.adapters.repository import CaseRepository
from workflow.adapters.tables import cases, contact_intents, money_seen, timeline
from workflow.app.handlers import Workflow
from workflow.domain import messages as m
from workflow.domain.policy import PolicyBook


async def scalar(runtime: Runtime, stmt: object) -> object:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(stmt)  # type: ignore[call-overload]


async def test_a_repayment_read_before_the_overdue_report_closes_its_case_at_once(
    workflow: Runtime, lender: lending.Lender, stack: dict[str, str], topic_prefix: str
) -> None:
    # The report was made before the repayment, but is consumed after it (as after a
    # restart, each topic from its own offset). No ledger-sync runs: nothing else closes.
    reported_at = datetime.now(UTC) - timedelta(hours=1)
    await lender.publish(
        lending.repayment("L-early", Decimal("900.00"), Decimal("0"), repayment_id="R-early")
    )
    await eventually(
        lambda: scalar(
            workflow, select(money_seen.c.repayment_id).where(money_seen.c.loan_id == "L-early")
        )
    )
    await lender.publish(lending.overdue("L-early", Decimal("900.00"), as_of=reported_at))

    exit_ = await eventually(
        lambda: scalar(
            workflow,
            select(cases.c.exit).where(cases.c.loan_id == "L-early", cases.c.status == "closed"),
        ),
        within=10,
    )
    assert exit_ == "repaid"
    assert await scalar(workflow, select(func.count()).select_from(contact_intents)) == 0
    assert await scalar(workflow, select(func.count()).select_from(money_seen)) == 0
    await asyncio.sleep(1.0)  # give a wrong check or command every chance to appear
    sent = [
        e.data
        for topic in (Topic.BALANCE_CHECKS, Topic.CONTACT_COMMANDS)
        for e in await read_topic(stack["kafka_bootstrap"], topic_prefix + topic.value)
        if not isinstance(e, Exception)
    ]
    assert not any(isinstance(m, c.BalanceCheckRequested | c.ContactCommand) for m in sent)
    assert await mismatched_replays(workflow.engine) == []


async def test_a_partial_repayment_read_first_lowers_the_late_reports_balance(
    workflow: Runtime, lender: lending.Lender
) -> None:
    reported_at = datetime.now(UTC) - timedelta(hours=1)
    await lender.publish(lending.repayment("L-part", Decimal("600.00"), Decimal("300.00")))
    await eventually(
        lambda: scalar(
            workflow, select(money_seen.c.repayment_id).where(money_seen.c.loan_id == "L-part")
        )
    )
    await lender.publish(lending.overdue("L-part", Decimal("900.00"), as_of=reported_at))

    outstanding = await eventually(
        lambda: scalar(workflow, select(cases.c.outstanding).where(cases.c.loan_id == "L-part")),
        within=10,
    )
    assert outstanding == Decimal("300.00")
    assert (
        await scalar(
            workflow,
            select(timeline.c.detail["money_seen"].astext).where(timeline.c.kind == "case_opened"),
        )
        is not None
    )
    assert await mismatched_replays(workflow.engine) == []


async def test_money_seen_is_forgotten_after_its_retention(
    workflow: Runtime, lender: lending.Lender
) -> None:
    await lender.publish(lending.repayment("L-gone", Decimal("10.00"), Decimal("0")))
    seen_at = await eventually(
        lambda: scalar(
            workflow, select(money_seen.c.seen_at).where(money_seen.c.loan_id == "L-gone")
        )
    )
    assert isinstance(seen_at, datetime)
    async with workflow.engine.begin() as conn:
        assert await CaseRepository(conn).prune_money_seen(seen_at) == 0
        assert await CaseRepository(conn).prune_money_seen(seen_at + timedelta(seconds=1)) == 1


async def test_a_confirmation_answering_a_check_older_than_a_repayment_keeps_its_balance(
    workflow: Runtime, lender: lending.Lender
) -> None:
    await lender.publish(lending.overdue("L-race", Decimal("900.00")))
    check_id = await eventually(
        lambda: scalar(
            workflow,
            select(contact_intents.c.check_id)
            .where(contact_intents.c.loan_id == "L-race")
            .limit(1),
        )
    )
    # Repaid in part between the check and its answer; the answer was computed before.
    await lender.publish(lending.repayment("L-race", Decimal("600.00"), Decimal("300.00")))
    await eventually(
        lambda: scalar(
            workflow,
            select(cases.c.case_id).where(
                cases.c.loan_id == "L-race", cases.c.outstanding == Decimal("300.00")
            ),
        )
    )
    now = datetime.now(UTC)
    await lender.publish(
        c.BalanceConfirmed(
            check_id=str(check_id),
            loan_id="L-race",
            confirmation_id="conf-race",
            currency="CNY",
            confirmed_outstanding=Decimal("900.00"),
            ledger_watermark=3,
            confirmed_at=now,
            valid_until=now + timedelta(minutes=10),
            expected_outstanding=Decimal("900.00"),
        )
    )

    await eventually(
        lambda: scalar(
            workflow,
            select(contact_intents.c.command_id).where(contact_intents.c.check_id == str(check_id)),
        )
    )
    assert await scalar(
        workflow, select(cases.c.outstanding).where(cases.c.loan_id == "L-race")
    ) == Decimal("300.00")
    assert await mismatched_replays(workflow.engine) == []


async def test_only_the_newest_money_seen_counts_a_bounced_repayment_leaves_it_owed(
    workflow: Runtime, lender: lending.Lender
) -> None:
    reported_at = datetime.now(UTC) - timedelta(hours=1)
    await lender.publish(
        lending.repayment("L-bounced", Decimal("900.00"), Decimal("0"), repayment_id="R-bounced")
    )
    await eventually(
        lambda: scalar(
            workflow, select(money_seen.c.kind).where(money_seen.c.loan_id == "L-bounced")
        )
    )
    await lender.publish(
        c.RepaymentReversed(
            repayment_id="R-bounced",
            loan_id="L-bounced",
            currency="CNY",
            amount=Decimal("900.00"),
            outstanding_balance_after=Decimal("900.00"),
            reversed_at=datetime.now(UTC),
        )
    )
    await eventually(
        lambda: scalar(
            workflow,
            select(money_seen.c.kind == "reversal").where(money_seen.c.loan_id == "L-bounced"),
        )
    )
    await lender.publish(lending.overdue("L-bounced", Decimal("900.00"), as_of=reported_at))

    status = await eventually(
        lambda: scalar(workflow, select(cases.c.status).where(cases.c.loan_id == "L-bounced")),
        within=10,
    )
    assert status == "open"
    assert await scalar(
        workflow, select(cases.c.outstanding).where(cases.c.loan_id == "L-bounced")
    ) == Decimal("900.00")
    assert await mismatched_replays(workflow.engine) == []


async def test_a_repayment_decided_while_the_opening_report_commits_is_not_lost(
    workflow: Runtime,
) -> None:
    """Two transactions at once: the report opening the case (not yet committed) and the
    loan's repayment. The repayment must wait and then apply to the case; seeing no case
    row, it would otherwise be remembered for a loan that has one, and forgotten."""
    flow = Workflow(PolicyBook())
    now = datetime.now(UTC)
    report = m.OverdueReported(
        "e-open",
        "L-both",
        "B1",
        "consumer-loan",
        "CNY",
        Decimal("90"),
        Decimal("900"),
        5,
        now - timedelta(hours=1),
        "Asia/Shanghai",
        "CN",
    )
    repaid = m.RepaymentReceived("e-paid", "R-both", Decimal("900"), Decimal("0"), now)

    def tx_on(conn: Any) -> Tx:
        return Tx(conn=conn, now=datetime.now(UTC), source="test", topic_prefix="t.")

    async with workflow.engine.connect() as opening:
        await opening.begin()
        await flow.run(tx_on(opening), "L-both", report, "e-open")

        async def repay() -> None:
            async with workflow.engine.begin() as conn:
                await flow.run(tx_on(conn), "L-both", repaid, "e-paid")

        paying = asyncio.create_task(repay())
        await asyncio.sleep(1.0)
        assert not paying.done()  # it waits for the opening to commit or roll back
        await opening.commit()
    await asyncio.wait_for(paying, 10)
    assert (
        await scalar(workflow, select(cases.c.exit).where(cases.c.loan_id == "L-both")) == "repaid"
    )
    assert await scalar(workflow, select(func.count()).select_from(money_seen)) == 0
    assert await mismatched_replays(workflow.engine) == []


async def test_a_repayment_read_before_a_risk_signal_sets_its_case_balance(
    workflow: Runtime, lender: lending.Lender
) -> None:
    """Early warning: the newest repayment of a loan without a case, seen after the signal
    was observed, is news to it; one that repaid the loan opens no case."""
    observed = datetime.now(UTC) - timedelta(hours=1)
    # The repaid loan's first: read by the time the other's case is there (and a second on).
    for loan, after in (("L-ew-paid", Decimal("0")), ("L-ew-part", Decimal("700.00"))):
        await lender.publish(
            lending.repayment(loan, Decimal("300.00"), after, repayment_id=f"R-{loan}")
        )
        await eventually(
            lambda loan=loan: scalar(  # type: ignore[misc]
                workflow, select(money_seen.c.repayment_id).where(money_seen.c.loan_id == loan)
            )
        )
        await lender.publish(lending.risk_signal(loan, Decimal("1000.00"), observed_at=observed))
    outstanding = await eventually(
        lambda: scalar(workflow, select(cases.c.outstanding).where(cases.c.loan_id == "L-ew-part"))
    )
    assert outstanding == Decimal("700.00")
    await asyncio.sleep(1.0)  # the repaid loan's signal has been read by now
    assert (
        await scalar(
            workflow, select(func.count()).select_from(cases).where(cases.c.loan_id == "L-ew-paid")
        )
        == 0
    )
    assert await mismatched_replays(workflow.engine) == []
