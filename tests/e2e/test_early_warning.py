"""Early warning through Kafka, PostgreSQL and SMTP: a risk signal on a current loan opens a
pre-delinquency case that contacts the borrower only, never escalates, reminds on its
durable timer and ends when the signal expires; an overdue report then makes it an
ordinary case, the same case with the earlier history (docs/early-warning.md).

The three services run in-process (their real runtimes: consumer loops, outbox relays,
timer workers, the notifier's dispatcher and SMTP channel) so that one test clock moves
time forward for every durable timer; REST calls go through the real ASGI apps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
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
from notifier.entrypoints import bootstrap as notifier_boot
from notifier.settings import NotifierSettings
from scripts import lending
from scripts.infra import producer
from tests.smtp_sink import SmtpSink
from tests.support import (
    eventually,
    migrate,
    mismatched_replays,
    read_topic,
    running,
    zone_at_midday,
)
from workflow.domain.policy import DEFAULT_POLICY, Stage
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

assert DEFAULT_POLICY.early_warning is not None
EARLY = DEFAULT_POLICY.early_warning
# The full path test's choice: a UK borrower in a zone where it is midday now, so the
# contact window is open (and stays so, the clock moving by whole days).
TZ = zone_at_midday()


@dataclass
class World:
    workflow: httpx.AsyncClient
    notifier: httpx.AsyncClient
    lender: lending.Lender
    clock: OffsetClock
    smtp: SmtpSink
    stack: dict[str, str]
    prefix: str

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock.offset

    async def case(self, loan: str) -> dict[str, Any]:
        response = await self.workflow.get(f"/v1/cases/{loan}")
        return dict(response.json()) if response.status_code == 200 else {}

    async def kinds(self, loan: str) -> list[str]:
        body = (await self.workflow.get(f"/v1/cases/{loan}/timeline?limit=500")).json()
        return [e["kind"] for e in body.get("entries", [])]

    async def topic(self, topic: Topic) -> list[Envelope]:
        found = await read_topic(self.stack["kafka_bootstrap"], self.prefix + topic.value)
        return [e for e in found if isinstance(e, Envelope)]

    async def commands(self, loan: str) -> list[c.ContactCommand]:
        return [
            e.data
            for e in await self.topic(Topic.CONTACT_COMMANDS)
            if isinstance(e.data, c.ContactCommand) and e.data.loan_id == loan
        ]

    async def borrower(self, borrower: str, email: str) -> None:
        put = await self.notifier.put(
            f"/v1/borrowers/{borrower}/contact-details",
            json={"language": "en", "email": email, "postal_address": "1 Test Street, London"},
        )
        assert put.status_code == 204, put.text

    def mails_to(self, email: str) -> list[str]:
        return [_text(content) for rcpts, content in self.smtp.messages if email in rcpts]


@pytest.fixture
async def world(
    stack: dict[str, str], database_url: str, topic_prefix: str, smtp_sink: SmtpSink
) -> AsyncIterator[World]:
    common = {
        "database_url": database_url,
        "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix,
    }
    wf_settings = WorkflowSettings.model_validate(common)
    ls_settings = LedgerSyncSettings.model_validate(common)
    nt_settings = NotifierSettings.model_validate(
        {**common, "environment": "test", "smtp_port": smtp_sink.port}
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, wf_settings.db_schema)
    await migrate(ledger_boot.MIGRATIONS, database_url, ls_settings.db_schema)
    await migrate(notifier_boot.MIGRATIONS, database_url, nt_settings.db_schema)
    clock = OffsetClock()
    kafka = await producer(stack["kafka_bootstrap"])
    headers = dev_headers(subject="agent:test")
    try:
        async with (
            running(workflow_boot.build_runtime(wf_settings, clock=clock)) as wf,
            running(ledger_boot.build_runtime(ls_settings, clock=clock)),
            running(notifier_boot.build_runtime(nt_settings, clock=clock)) as nt,
        ):
            wf_app = workflow_boot.create_app(wf, manage_runtime=False)
            nt_app = notifier_boot.create_app(nt, manage_runtime=False)
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=wf_app),
                    base_url="http://workflow",
                    headers=headers,
                ) as wf_http,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=nt_app),
                    base_url="http://notifier",
                    headers=headers,
                ) as nt_http,
            ):
                yield World(
                    wf_http,
                    nt_http,
                    lending.Lender(kafka, topic_prefix),
                    clock,
                    smtp_sink,
                    stack,
                    topic_prefix,
                )
            # Every case equals the fold of the pure decisions over its journal, the new
            # inputs (risk signals, their timers) included.
            assert await mismatched_replays(wf.engine) == []
    finally:
        await kafka.stop()


def _text(content: bytes) -> str:
    """An e-mail's text as the borrower reads it (MIME decoded)."""
    message = BytesParser(policy=default).parsebytes(content)
    body = message.get_body(("plain",)) if isinstance(message, EmailMessage) else None
    return str(message["subject"]) + "\n" + (body.get_content() if body is not None else "")


async def _phase(world: World, loan: str, phase: str) -> dict[str, Any] | None:
    case = await world.case(loan)
    return case if case.get("phase") == phase else None


async def _all_commanded(world: World, loan: str, at_least: int) -> dict[str, Any] | None:
    case = await world.case(loan)
    intents = case.get("intents", [])
    done = len(intents) >= at_least and all(
        i["status"] in ("commanded", "cancelled") for i in intents
    )
    commanded = [i for i in intents if i["status"] == "commanded"]
    return case if done and len(commanded) >= at_least else None


async def _mails(world: World, email: str, count: int) -> list[str] | None:
    found = world.mails_to(email)
    return found if len(found) >= count else None


async def test_a_risk_signal_opens_a_pre_delinquency_case_that_becomes_an_ordinary_one(
    world: World,
) -> None:
    loan, borrower, email = "L-ew-1", "B-ew-1", "ew.borrower@example.com"
    owed = Decimal("6000.00")
    await world.borrower(borrower, email)
    await world.lender.publish(lending.disbursement(loan, owed, currency="GBP"))
    await world.lender.publish(
        lending.risk_signal(
            loan,
            owed,
            score=Decimal("0.91"),
            valid_for=timedelta(days=40),
            signal_id="S-ew-1",
            borrower_id=borrower,
            currency="GBP",
            jurisdiction="UK",
            tz=TZ,
        )
    )

    # Opened, confirmed against the ledger, contacted: the borrower, by e-mail, only.
    case = await eventually(lambda: _phase(world, loan, "pre_delinquency"), within=60)
    assert case["pre_delinquency"]["signal_id"] == "S-ew-1"
    assert case["days_past_due"] == 0
    await eventually(lambda: _all_commanded(world, loan, len(EARLY.contacts)), within=60)
    first = await eventually(lambda: _mails(world, email, 1), within=60)
    assert "nothing on your loan" in first[0]
    assert "{opt_out}" not in first[0]
    kinds = await world.kinds(loan)
    assert kinds.index("contact_intent_recorded") < kinds.index("contact_commanded")

    # Nobody may escalate it, and nothing happens to it by REST that would.
    refused = await world.workflow.post(
        f"/v1/cases/{loan}/escalations",
        json={"kind": "manual", "reason": "push it"},
        headers={"Idempotency-Key": "esc-ew-1"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "pre-delinquency" in refused.json()["detail"]

    # Its durable reminder timer: a week on, the borrower is reminded, confirmed again.
    world.clock.advance(EARLY.reminder_every + timedelta(minutes=1))
    await eventually(lambda: _count(world, loan, "pre_delinquency_reminder", 1), within=60)
    await eventually(lambda: _all_commanded(world, loan, 2 * len(EARLY.contacts)), within=60)
    await eventually(lambda: _mails(world, email, 2), within=60)

    commands = await world.commands(loan)
    assert len(commands) == 2 * len(EARLY.contacts)
    assert {(cmd.recipient, cmd.template) for cmd in commands} == {
        ("debtor", contact.template) for contact in EARLY.contacts
    }
    assert not [
        e
        for e in await world.topic(Topic.CASE_EVENTS)
        if isinstance(e.data, c.CaseStageChanged) and e.data.loan_id == loan
    ]
    assert not [m for rcpts, m in world.smtp.messages if email not in rcpts and loan in _text(m)]

    # The loan falls overdue: the same case collects as any other, its history kept.
    await world.lender.publish(
        lending.overdue(
            loan,
            owed,
            dpd=3,
            currency="GBP",
            jurisdiction="UK",
            tz=TZ,
            as_of=world.now(),
            borrower_id=borrower,
        )
    )
    ordinary = await eventually(lambda: _phase(world, loan, "warning"), within=60)
    assert ordinary["case_id"] == case["case_id"]
    assert ordinary["pre_delinquency"] is None
    assert ordinary["days_past_due"] == 3
    kinds = await world.kinds(loan)
    assert kinds[0] == "pre_delinquency_opened"
    assert kinds.count("pre_delinquency_reminder") == 1
    ended = kinds.index("pre_delinquency_ended")
    assert "contact_intent_recorded" in kinds[ended:]
    warning = {cmd.template for cmd in await _warning_commands(world, loan)}
    assert warning == {p.template for p in DEFAULT_POLICY.for_stage(Stage.WARNING).contacts}


async def _warning_commands(world: World, loan: str) -> list[c.ContactCommand]:
    async def found() -> list[c.ContactCommand] | None:
        early = {contact.template for contact in EARLY.contacts}
        later = [cmd for cmd in await world.commands(loan) if cmd.template not in early]
        return later if later else None

    commands: list[c.ContactCommand] = await eventually(found, within=60)
    return commands


async def _count(world: World, loan: str, kind: str, at_least: int) -> bool:
    return (await world.kinds(loan)).count(kind) >= at_least


async def test_the_case_ends_when_the_signal_expires_and_reopens_when_the_loan_falls_due(
    world: World,
) -> None:
    loan, owed = "L-ew-2", Decimal("2500.00")
    await world.lender.publish(lending.disbursement(loan, owed, currency="GBP"))
    signal = lending.risk_signal(
        loan, owed, valid_for=timedelta(days=3), currency="GBP", jurisdiction="UK", tz=TZ
    )
    await world.lender.publish(signal)
    case = await eventually(lambda: _phase(world, loan, "pre_delinquency"), within=60)
    # A later, longer signal extends it: the first expiry goes stale.
    await world.lender.publish(
        lending.risk_signal(
            loan, owed, valid_for=timedelta(days=5), currency="GBP", jurisdiction="UK", tz=TZ
        )
    )
    await eventually(lambda: _count(world, loan, "pre_delinquency_extended", 1), within=60)

    world.clock.advance(timedelta(days=4))
    await asyncio.sleep(2)  # the first expiry timer fires and is stale
    assert (await world.case(loan))["phase"] == "pre_delinquency"
    world.clock.advance(timedelta(days=2))
    closed = await eventually(lambda: _phase(world, loan, "closed"), within=60)
    assert closed["exit"] == "closed"

    await world.lender.publish(
        lending.overdue(loan, owed, currency="GBP", jurisdiction="UK", as_of=world.now())
    )
    reopened = await eventually(lambda: _phase(world, loan, "warning"), within=60)
    assert reopened["case_id"] == case["case_id"]
    assert reopened["status"] == "open"
    kinds = await world.kinds(loan)
    assert kinds.index("case_closed") < kinds.index("pre_delinquency_ended")


async def test_bad_signals_are_dead_lettered_and_duplicates_make_one_case(world: World) -> None:
    topic = world.prefix + Topic.LOANS_RISK_SIGNALS.value
    good = lending.risk_signal("L-ew-dup", Decimal("900.00"))
    await world.lender.publish(good, event_id="evt-ew-dup")
    await world.lender.publish(good, event_id="evt-ew-dup")  # a redelivery: one effect
    other = good.model_copy(update={"score": Decimal("0.99")})
    await world.lender.publish(other, event_id="evt-ew-dup")  # another payload: the DLQ
    # Malformed: a score above 1, a validity ending before it began, a jurisdiction
    # without a policy, a field of the wrong type.
    _, key, value, headers = lending.record_for(lending.risk_signal("L-ew-bad", Decimal("1")))
    await world.lender.producer.send_and_wait(
        topic, value=value.replace(b'"score":"0.90"', b'"score":"1.5"'), key=key, headers=headers
    )
    backwards = lending.risk_signal("L-ew-bad", Decimal("1")).model_dump(mode="json")
    backwards["valid_until"] = "2020-01-01T00:00:00Z"
    await world.lender.producer.send_and_wait(
        topic, value=json.dumps(backwards).encode(), key=key, headers=headers
    )
    await world.lender.publish(lending.risk_signal("L-ew-bad", Decimal("1"), jurisdiction="ZZ"))
    _, key, value, headers = lending.record_for(lending.risk_signal("L-ew-bad", Decimal("1")))
    await world.lender.producer.send_and_wait(
        topic,
        value=value.replace(b'"outstanding_balance":"1.00"', b'"outstanding_balance":[]'),
        key=key,
        headers=headers,
    )
    # Below the threshold: consumed, and no case.
    await world.lender.publish(lending.risk_signal("L-ew-low", Decimal("1"), score=Decimal("0.1")))
    await world.lender.publish(lending.risk_signal("L-ew-marker", Decimal("1")))
    await eventually(lambda: _phase(world, "L-ew-marker", "pre_delinquency"), within=60)

    async def letters() -> list[c.DeadLetter] | None:
        found = [
            e.data
            for e in await world.topic(Topic.DLQ)
            if isinstance(e.data, c.DeadLetter) and e.data.origin_topic == topic
        ]
        return found if len(found) >= 5 else None

    dead = await eventually(letters, within=60)
    assert len(dead) == 5, [(d.error_kind, d.reason) for d in dead]
    assert all(d.reason and d.origin_offset >= 0 for d in dead)
    kinds = sorted(d.error_kind for d in dead)
    assert kinds.count("conflicting_duplicate") == 1
    assert kinds.count("invalid") == 4, kinds
    reasons = " ".join(d.reason for d in dead)
    for said in ("score", "valid_until", "jurisdiction ZZ has no policy", "outstanding_balance"):
        assert said in reasons, reasons
    assert await world.case("L-ew-bad") == {}
    assert await world.case("L-ew-low") == {}
    dup = await world.case("L-ew-dup")
    assert dup["pre_delinquency"]["score"] == "0.90"  # the first payload's
    assert (await world.kinds("L-ew-dup")).count("pre_delinquency_opened") == 1
