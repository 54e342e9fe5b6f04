"""The core guarantees of the path, against the real broker and PostgreSQL.

Workflow and ledger-sync run in-process here (their real runtimes: consumer loops, outbox
relays, PostgreSQL, Kafka); the crash test runs the workflow as a real process and kills it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.envelope import Envelope
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from ledger_sync.entrypoints import bootstrap as ledger_sync_boot
from ledger_sync.settings import LedgerSyncSettings
from scripts import lending
from scripts.services import ServiceProcess
from tests.support import eventually, migrate, read_topic, running
from workflow.adapters.tables import cases, contact_intents, timeline
from workflow.domain.policy import DEFAULT_POLICY, Stage
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

WARNING_CONTACTS = len(DEFAULT_POLICY.for_stage(Stage.WARNING).contacts)


@pytest.fixture
async def services(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    common = {
        "database_url": database_url,
        "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix,
    }
    wf_settings = WorkflowSettings.model_validate(common)
    ls_settings = LedgerSyncSettings.model_validate(common)
    await migrate(workflow_boot.MIGRATIONS, database_url, wf_settings.db_schema)
    await migrate(ledger_sync_boot.MIGRATIONS, database_url, ls_settings.db_schema)
    async with (
        running(workflow_boot.build_runtime(wf_settings)) as wf,
        running(ledger_sync_boot.build_runtime(ls_settings)) as ls,
    ):
        yield wf, ls


async def _scalar(runtime: Runtime, stmt: object) -> object:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(stmt)  # type: ignore[call-overload]


async def _envelopes(stack: dict[str, str], prefix: str, topic: Topic) -> list[Envelope]:
    return [
        e
        for e in await read_topic(stack["kafka_bootstrap"], prefix + topic.value)
        if isinstance(e, Envelope)
    ]


async def test_loan_repaid_before_its_balance_check_gets_no_contact_command(
    services: tuple[Runtime, Runtime],
    lender: lending.Lender,
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    wf, ls = services
    await lender.publish(lending.disbursement("L-paid", Decimal("1000.00")))
    await lender.publish(
        lending.repayment("L-paid", Decimal("1000.00"), Decimal("0"), repayment_id="R-paid")
    )
    await eventually(
        lambda: _scalar(ls, text("SELECT count(*) FROM repayments WHERE repayment_id = 'R-paid'"))
    )
    # The lending system's overdue feed lags behind the payment: it still reports the debt.
    await lender.publish(lending.overdue("L-paid", Decimal("1000.00")))

    status = await eventually(
        lambda: _scalar(
            wf, select(cases.c.exit).where(cases.c.loan_id == "L-paid", cases.c.status == "closed")
        )
    )
    assert status == "repaid"
    await asyncio.sleep(1.0)  # give a wrong command every chance to appear
    commands = [
        e
        for e in await _envelopes(stack, topic_prefix, Topic.CONTACT_COMMANDS)
        if isinstance(e.data, c.ContactCommand)
    ]
    assert commands == []
    refusals = [e.data for e in await _envelopes(stack, topic_prefix, Topic.BALANCE_CONFIRMATIONS)]
    assert {r.reason for r in refusals if isinstance(r, c.BalanceRefused)} == {"nothing_owed"}


async def test_the_same_overdue_event_twice_yields_one_case_and_one_set_of_intents(
    services: tuple[Runtime, Runtime],
    lender: lending.Lender,
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    wf, _ = services
    await lender.publish(lending.disbursement("L-dup", Decimal("500.00")))
    event = lending.overdue("L-dup", Decimal("500.00"))
    await lender.publish(event, event_id="evt-dup-1")
    await lender.publish(event, event_id="evt-dup-1")

    await eventually(
        lambda: _scalar(
            wf,
            select(func.count())
            .select_from(contact_intents)
            .where(contact_intents.c.status == "commanded"),
        )
    )
    await asyncio.sleep(1.0)
    assert await _scalar(wf, select(func.count()).select_from(cases)) == 1
    assert await _scalar(wf, select(func.count()).select_from(contact_intents)) == WARNING_CONTACTS
    assert (
        await _scalar(
            wf, select(func.count()).select_from(timeline).where(timeline.c.kind == "case_opened")
        )
        == 1
    )
    checks = await _envelopes(stack, topic_prefix, Topic.BALANCE_CHECKS)
    assert len({e.id for e in checks}) == WARNING_CONTACTS


async def test_malformed_messages_are_dead_lettered_and_the_next_good_one_is_processed(
    services: tuple[Runtime, Runtime],
    lender: lending.Lender,
    stack: dict[str, str],
    topic_prefix: str,
) -> None:
    wf, _ = services
    topic = topic_prefix + Topic.LOANS_OVERDUE.value
    await lender.producer.send_and_wait(topic, value=b"\x00not json", key=b"L-bad")
    _, key, value, headers = lending.record_for(lending.overdue("L-bad", Decimal("10.00")))
    broken = value.replace(b'"days_past_due":5', b'"days_past_due":"many"')
    await lender.producer.send_and_wait(topic, value=broken, key=key, headers=headers)
    await lender.publish(lending.overdue("L-good", Decimal("300.00")))

    await eventually(
        lambda: _scalar(wf, select(cases.c.case_id).where(cases.c.loan_id == "L-good"))
    )
    letters = await eventually(lambda: _dead_letters(stack, topic_prefix))
    assert len(letters) == 2
    assert {d.origin_topic for d in letters} == {topic}
    assert {d.error_kind for d in letters} == {"undecodable", "invalid"}
    assert [
        (d.reason, d.origin_offset) for d in letters if not d.reason or d.origin_offset < 0
    ] == []
    assert any("days_past_due" in d.reason for d in letters), [d.reason for d in letters]
    assert (
        await _scalar(wf, select(func.count()).select_from(cases).where(cases.c.loan_id == "L-bad"))
        == 0
    )


async def _dead_letters(stack: dict[str, str], prefix: str) -> list[c.DeadLetter]:
    letters = [e.data for e in await _envelopes(stack, prefix, Topic.DLQ)]
    found = [d for d in letters if isinstance(d, c.DeadLetter)]
    return found if len(found) >= 2 else []


async def test_a_crash_between_database_commit_and_offset_commit_duplicates_nothing(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    lender: lending.Lender,
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_")}
    env.update(
        {
            "WORKFLOW_DATABASE_URL": database_url,
            "WORKFLOW_TOPIC_PREFIX": topic_prefix,
            "WORKFLOW_KAFKA_BOOTSTRAP": stack["kafka_bootstrap"],
            "WORKFLOW_HTTP_PORT": "18191",
            "COLLECTIONS_FAULT_CRASH_AT": "after_db_commit",
            "COLLECTIONS_FAULT_CRASH_AFTER": "1",
        }
    )
    workflow = ServiceProcess("workflow", 18191, env, tmp_path / "workflow.log")
    await asyncio.to_thread(workflow.migrate)
    workflow.start()
    await lender.publish(lending.overdue("L-crash", Decimal("700.00")), event_id="evt-crash")
    assert workflow.process is not None
    code = await asyncio.to_thread(workflow.process.wait, 60)
    assert code == 137, "the fault hook should have killed the consumer after its DB commit"

    for key in ("COLLECTIONS_FAULT_CRASH_AT", "COLLECTIONS_FAULT_CRASH_AFTER"):
        env.pop(key)
    workflow.start()
    try:
        await asyncio.to_thread(workflow.wait_ready)
        async with httpx.AsyncClient(
            base_url=workflow.base_url, headers=dev_headers(["cases:read"])
        ) as http:

            async def settled() -> bool:
                entries = (await http.get("/v1/cases/L-crash/timeline")).json()["entries"]
                checks = await _envelopes(stack, topic_prefix, Topic.BALANCE_CHECKS)
                return len(entries) >= 1 and len(checks) >= WARNING_CONTACTS

            await eventually(settled, within=60)
            await asyncio.sleep(1.5)  # the redelivered batch has been handled by now
            case = (await http.get("/v1/cases/L-crash")).json()
            entries = (await http.get("/v1/cases/L-crash/timeline")).json()["entries"]
    finally:
        workflow.stop()
    assert len(case["intents"]) == WARNING_CONTACTS
    assert [e["kind"] for e in entries].count("case_opened") == 1
    checks = await _envelopes(stack, topic_prefix, Topic.BALANCE_CHECKS)
    assert len({e.id for e in checks}) == WARNING_CONTACTS


async def test_a_case_reopened_by_a_bounced_repayment_is_reconciled_again(
    services: tuple[Runtime, Runtime], lender: lending.Lender
) -> None:
    wf, ls = services
    await lender.publish(lending.disbursement("L-bounce", Decimal("800.00")))
    await lender.publish(lending.overdue("L-bounce", Decimal("800.00")))
    opened = text("SELECT case_id FROM open_cases WHERE loan_id = 'L-bounce'")
    case_id = await eventually(lambda: _scalar(ls, opened))
    await lender.publish(
        lending.repayment("L-bounce", Decimal("800.00"), Decimal("0"), repayment_id="R-bounce")
    )
    await eventually(
        lambda: _scalar(
            wf,
            select(cases.c.case_id).where(
                cases.c.loan_id == "L-bounce", cases.c.status == "closed"
            ),
        )
    )
    await eventually(
        lambda: _scalar(ls, text("SELECT count(*) = 0 FROM open_cases WHERE loan_id = 'L-bounce'"))
    )

    await lender.publish(
        c.RepaymentReversed(
            repayment_id="R-bounce",
            loan_id="L-bounce",
            currency="CNY",
            amount=Decimal("800.00"),
            outstanding_balance_after=Decimal("800.00"),
            reversed_at=datetime.now(UTC),
        )
    )
    await eventually(
        lambda: _scalar(
            wf,
            select(cases.c.case_id).where(cases.c.loan_id == "L-bounce", cases.c.status == "open"),
        )
    )
    assert await eventually(lambda: _scalar(ls, opened)) == case_id
