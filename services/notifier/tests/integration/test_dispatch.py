"""The notifier's handlers, dispatcher, channels and REST API against a real PostgreSQL.

Kafka stays out of it: handlers are called with a transaction like the consumer loop's, and
the outcomes are read from the outbox, which is what the relay would publish.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, func, select, text

from collections_kit import contract as c
from collections_kit import metrics
from collections_kit.auth import dev_headers
from collections_kit.clock import FixedClock
from collections_kit.db import asyncpg_dsn
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx, flush
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from notifier.adapters.recording import open_recorded
from notifier.adapters.repository import DecisionRecord, DispatchRepository
from notifier.adapters.tables import dispatches, outbox, recorded_sends
from notifier.app.dispatcher import Dispatcher, _Sent
from notifier.app.handlers import NotifierHandlers, to_request
from notifier.app.ports import Delivery, OutgoingMessage, SendError
from notifier.domain.in_doubt import Found, NotFound
from notifier.domain.model import DispatchStatus, Repayment
from notifier.domain.policy import DispatchPolicy
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from scripts import lending
from tests.smtp_sink import SmtpSink
from tests.support import migrate, poll_of

# 10:00 in Shanghai, 21:00 (outside the US window) in New York.
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


# Every id the notifier's consumers claimed (one row per poll: collections_kit.consumer).
_CLAIMED = text("SELECT unnest(event_ids) FROM inbox_claims ORDER BY seq")


@dataclass
class Notifier:
    runtime: Runtime
    clock: FixedClock
    http: httpx.AsyncClient

    @property
    def dispatcher(self) -> Dispatcher:
        dispatcher: Dispatcher = self.runtime.state["dispatcher"]
        return dispatcher

    async def deliver(
        self, message: c.Message, event_id: str, handlers: NotifierHandlers | None = None
    ) -> None:
        """Run the handler as the consumer loop would: one transaction, outbox flushed."""
        routes = (handlers or NotifierHandlers(DispatchPolicy())).routes()
        async with self.runtime.engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=self.clock.now(),
                source="test",
                topic_prefix="",
                outbox=outbox,
                schema="notifier",
            )
            subject = str(getattr(message, "loan_id", ""))
            await routes[type(message)](
                tx,
                Envelope(
                    id=event_id,
                    type="test",
                    source="test",
                    time=self.clock.now(),
                    subject=subject,
                    data=message,
                ),
            )
            await flush(tx)

    async def outcomes(self) -> list[c.ContactOutcome]:
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(
                select(func.unnest(outbox.c.payloads).label("value")).order_by(outbox.c.id)
            )
            return [c.ContactOutcome.model_validate(json.loads(r.value)) for r in rows]

    async def status(self, command_id: str) -> str:
        async with self.runtime.engine.connect() as conn:
            status = await conn.scalar(
                select(dispatches.c.status).where(dispatches.c.command_id == command_id)
            )
        assert isinstance(status, str)
        return status


def _settings(database_url: str, smtp_port: int, **extra: Any) -> NotifierSettings:
    return NotifierSettings(
        database_url=database_url, smtp_port=smtp_port, send_retry_backoff_s=0, **extra
    )


# A client system's token: it may write and read contacts, but sees personal data masked.
CLIENT = dev_headers(["cases:read", "contacts:write", "admin"])


@pytest.fixture
async def notifier(database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Notifier]:
    settings = _settings(database_url, smtp_sink.port)
    await migrate(bootstrap.MIGRATIONS, database_url, settings.db_schema)
    clock = FixedClock(NOW)
    runtime = bootstrap.build_runtime(settings, clock=clock)
    app = bootstrap.create_app(runtime, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://notifier", headers=CLIENT
    ) as http:
        yield Notifier(runtime, clock, http)
    await runtime.engine.dispose()


def command(
    command_id: str,
    loan_id: str = "L1",
    borrower_id: str = "B1",
    *,
    at: datetime = NOW,
    **changes: Any,
) -> c.ContactCommand:
    fields: dict[str, Any] = {
        "command_id": command_id,
        "intent_id": f"i-{command_id}",
        "case_id": f"c-{loan_id}",
        "loan_id": loan_id,
        "borrower_id": borrower_id,
        "recipient": "debtor",
        "channel": "email",
        "stage": "warning",
        "template": "warning-reminder",
        "currency": "CNY",
        "amount_due": Decimal("1234.50"),
        "confirmation_id": "conf-1",
        "ledger_watermark": 3,
        "confirmed_at": at - timedelta(minutes=1),
        "confirmation_valid_until": at + timedelta(minutes=30),
        "borrower_time_zone": "Asia/Shanghai",
        "jurisdiction": "CN",
        "issued_at": at - timedelta(minutes=1),
    }
    fields.update(changes)
    return c.ContactCommand(**fields)


async def put_details(n: Notifier, borrower_id: str = "B1", **body: Any) -> None:
    payload = {
        "language": "zh-CN",
        "email": "zhang.san@example.com",
        "phone": "+8613812341234",
        "postal_address": "北京市朝阳区某路 1 号",
        **body,
    }
    response = await n.http.put(f"/v1/borrowers/{borrower_id}/contact-details", json=payload)
    assert response.status_code == 204, response.text


async def test_each_command_is_decided_once_recorded_and_announced(
    notifier: Notifier, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await put_details(notifier)
    await put_details(notifier, "B2", language="en", email="bob@example.com")
    await notifier.deliver(command("C1"), "e1")
    await notifier.deliver(command("C1"), "e1-again")  # the same command twice: stored once
    await notifier.deliver(command("C2", channel="sms"), "e2")
    await notifier.deliver(
        command(
            "C3",
            "L2",
            "B2",
            jurisdiction="US",
            currency="USD",
            borrower_time_zone="America/New_York",
        ),
        "e3",
    )
    await notifier.deliver(command("C4", "L3", "NOBODY"), "e4")

    assert await notifier.dispatcher.dispatch_once() == 4

    assert len(smtp_sink.messages) == 1
    recipients, raw = smtp_sink.messages[0]
    assert recipients == ["zhang.san@example.com"]
    assert b"Message-ID: <C1@lender.example>" in raw
    async with notifier.runtime.engine.connect() as conn:
        recorded = [
            open_recorded(r, notifier.runtime.state["pii"])
            for r in (await conn.execute(select(recorded_sends))).all()
        ]
    assert [(r.command_id, r.channel, r.address) for r in recorded] == [
        ("C2", "sms", "+8613812341234")
    ]
    assert "1,234.50 CNY" in recorded[0].body

    outcomes = {o.command_id: (o.outcome, o.reason, o.rule) for o in await notifier.outcomes()}
    assert outcomes == {
        "C1": ("sent", "all_checks_passed", "CN.contact_window"),
        "C2": ("sent", "all_checks_passed", "CN.contact_window"),
        "C3": ("deferred", "outside_contact_window", "US.contact_window"),
        "C4": ("blocked", "no_contact_details", "contact_details"),
    }
    page = (await notifier.http.get("/v1/contacts", params={"loan_id": "L2"})).json()
    assert [(d["decision"], d["due_at"]) for d in page["decisions"]] == [
        ("deferred", "2026-11-23T13:00:00Z")
    ]  # 08:00 in New York
    summary = (await notifier.http.get("/v1/contacts/summary")).json()
    assert summary["totals"] == {"blocked": 1, "deferred": 1, "sent": 2}
    masked = (await notifier.http.get("/v1/borrowers/B1/contact-details")).json()
    assert masked["email"] == "z***@example.com"
    assert masked["phone"] == "+86*******1234"
    assert masked["masked"] is True
    clear = (
        await notifier.http.get(
            "/v1/borrowers/B1/contact-details", headers=dev_headers(["cases:read", "pii:read"])
        )
    ).json()
    assert clear["email"] == "zhang.san@example.com"
    assert clear["masked"] is False

    # Nothing is due until New York wakes up; at 08:00 there the deferral goes out.
    assert await notifier.dispatcher.dispatch_once() == 0
    notifier.clock.set(datetime(2026, 11, 23, 13, 0, tzinfo=UTC))
    await notifier.deliver(
        command(
            "C5",
            "L2",
            "B2",
            jurisdiction="US",
            currency="USD",
            borrower_time_zone="America/New_York",
            at=notifier.clock.now(),
        ),
        "e5",
    )
    assert await notifier.dispatcher.dispatch_once() == 2
    assert await notifier.status("C5") == "sent"
    # C3's confirmation lapsed while it waited: the workflow must confirm again.
    assert await notifier.status("C3") == "cancelled"
    # Our log lines carry ids, never contact details (mail.log is the test's SMTP server).
    ours = "\n".join(
        f"{r.getMessage()} {vars(r)}" for r in caplog.records if not r.name.startswith("mail.log")
    )
    for secret in ("zhang.san", "bob@example.com", "13812341234", "朝阳区"):
        assert secret not in ours


async def test_a_cancellation_stops_pending_commands_and_late_ones_issued_before_it(
    notifier: Notifier,
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1"), "e1")
    await notifier.deliver(
        c.ContactCancelled(loan_id="L1", reason="repaid", cancelled_at=NOW), "e2"
    )
    assert await notifier.status("C1") == "cancelled"
    # Issued before the cancellation, arrived after it.
    await notifier.deliver(command("C2", issued_at=NOW - timedelta(minutes=5)), "e3")
    await notifier.dispatcher.dispatch_once()
    assert await notifier.status("C2") == "cancelled"
    outcomes = [(o.command_id, o.outcome, o.reason) for o in await notifier.outcomes()]
    assert outcomes == [("C1", "cancelled", "repaid"), ("C2", "cancelled", "repaid")]


async def test_a_repayment_after_the_confirmation_cancels_unless_reversed(
    notifier: Notifier,
) -> None:
    await put_details(notifier)
    for loan, repayment in (("L1", "R1"), ("L2", "R2")):
        await notifier.deliver(
            c.RepaymentReceived(
                repayment_id=repayment,
                loan_id=loan,
                currency="CNY",
                amount=Decimal("10"),
                outstanding_balance_after=Decimal("990"),
                received_at=NOW - timedelta(minutes=2),
            ),
            f"pay-{loan}",
        )
    await notifier.deliver(
        c.RepaymentReversed(
            repayment_id="R2",
            loan_id="L2",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("1000"),
            reversed_at=NOW,
        ),
        "rev-L2",
    )
    await notifier.deliver(command("C1", "L1"), "e1")
    await notifier.deliver(command("C2", "L2"), "e2")
    await notifier.dispatcher.dispatch_once()
    assert await notifier.status("C1") == "cancelled"
    assert await notifier.status("C2") == "sent"


async def test_a_repayment_stops_waiting_commands_at_once_by_the_recheck_rule(
    notifier: Notifier,
) -> None:
    """Cancelled when the repayment arrives, before any dispatch pass; a reversed one or one
    the confirmation had long seen stops nothing."""
    await put_details(notifier)
    await notifier.deliver(command("C1", "L1"), "e1")
    await notifier.deliver(command("C2", "L2"), "e2")
    await notifier.deliver(command("C3", "L3"), "e3")
    await notifier.deliver(
        c.RepaymentReceived(
            repayment_id="R1",
            loan_id="L1",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("990"),
            received_at=NOW,
        ),
        "pay-L1",
    )
    await notifier.deliver(
        c.RepaymentReversed(
            repayment_id="R2",
            loan_id="L2",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("1000"),
            reversed_at=NOW,
        ),
        "rev-L2",
    )
    await notifier.deliver(
        c.RepaymentReceived(
            repayment_id="R2",
            loan_id="L2",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("990"),
            received_at=NOW,
        ),
        "pay-L2",
    )
    await notifier.deliver(
        c.RepaymentReceived(
            repayment_id="R3",
            loan_id="L3",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("990"),
            received_at=NOW - timedelta(days=1),
        ),
        "pay-L3",
    )
    assert [await notifier.status(x) for x in ("C1", "C2", "C3")] == [
        "cancelled",
        "pending",
        "pending",
    ]
    assert [(o.command_id, o.outcome, o.reason) for o in await notifier.outcomes()] == [
        ("C1", "cancelled", "repaid_after_confirmation")
    ]
    await notifier.dispatcher.dispatch_once()
    assert [await notifier.status(x) for x in ("C2", "C3")] == ["sent", "sent"]


async def test_a_repayment_is_handled_by_a_loop_of_its_own_that_cancels_waiting_commands(
    notifier: Notifier,
) -> None:
    """Repayments never wait behind a poll of commands and case events: their topic has a
    consumer loop of its own, in the service's one group (so the same inbox and offsets),
    and a poll of it stops the loan's waiting commands."""
    # The third loop reads balance checks and confirmations (contact permits rest on them).
    contacts, repayments, confirmations = notifier.runtime.loops
    assert contacts._group == repayments._group == confirmations._group
    assert len({contacts._client_id, repayments._client_id, confirmations._client_id}) == 3
    assert repayments._topics == [Topic.LOANS_REPAYMENT.value]
    assert Topic.LOANS_REPAYMENT.value not in contacts._topics + confirmations._topics
    await put_details(notifier)
    await notifier.deliver(command("C1", "L1"), "cmd-1")
    await notifier.deliver(command("C2", "L2"), "cmd-2")
    await repayments._handle_poll(
        poll_of(
            [
                lending.record_for(
                    c.RepaymentReceived(
                        repayment_id="R1",
                        loan_id="L1",
                        currency="CNY",
                        amount=Decimal("10"),
                        outstanding_balance_after=Decimal("0"),
                        received_at=NOW,
                    ),
                    event_id="pay-1",
                )
            ]
        )
    )
    assert [await notifier.status(x) for x in ("C1", "C2")] == ["cancelled", "pending"]
    async with notifier.runtime.engine.connect() as conn:
        assert (await conn.execute(_CLAIMED)).scalars().all() == ["pay-1"]


def repaid(loan_id: str, repayment_id: str, **changes: Any) -> c.RepaymentReceived:
    fields: dict[str, Any] = {
        "repayment_id": repayment_id,
        "loan_id": loan_id,
        "currency": "CNY",
        "amount": Decimal("10"),
        "outstanding_balance_after": Decimal("0"),
        "received_at": NOW,
    }
    fields.update(changes)
    return c.RepaymentReceived(**fields)


async def test_a_repayment_poll_is_four_statements_and_one_event_id_has_one_effect(
    notifier: Notifier,
) -> None:
    """The repayment loop's transaction, on the path of every suppression: the inbox's
    locks and claim, the repayment stored with the loan's waiting commands read and locked,
    and the decisions written with the outbox row that announces them. Each waiting command
    is cancelled, audited and announced as one at a time would; the same event id again
    changes nothing, and with another payload it is dead-lettered."""
    await notifier.deliver(command("C1", "L1"), "cmd-1")
    await notifier.deliver(command("C2", "L1", issued_at=NOW - timedelta(minutes=5)), "cmd-2")
    await notifier.deliver(command("C3", "L2"), "cmd-3")
    _, repayments, _ = notifier.runtime.loops
    statements: list[str] = []

    def on_execute(*args: object) -> None:
        statements.append(str(args[2]))

    engine = notifier.runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        await repayments._handle_poll(
            poll_of([lending.record_for(repaid("L1", "R1"), event_id="pay-1")])
        )
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
    assert len(statements) == 4, statements
    assert [await notifier.status(x) for x in ("C1", "C2", "C3")] == [
        "cancelled",
        "cancelled",
        "pending",
    ]
    # In the order the commands were issued, each event id derived from the repayment's.
    outcomes = await notifier.outcomes()
    assert [(o.command_id, o.outcome, o.reason, o.rule) for o in outcomes] == [
        ("C2", "cancelled", "repaid_after_confirmation", "repayment_recheck"),
        ("C1", "cancelled", "repaid_after_confirmation", "repayment_recheck"),
    ]
    async with notifier.runtime.engine.connect() as conn:
        decided = (
            await conn.execute(
                text(
                    "SELECT d.command_id, d.seq, d.loan_id, d.channel, d.recipient, d.decision,"
                    " d.reason, d.rule, d.policy_version, d.at, d.due_at,"
                    " p.status, p.decision_seq, p.reason AS p_reason, p.rule AS p_rule,"
                    " p.updated_at FROM contact_decisions d"
                    " JOIN dispatches p USING (command_id) ORDER BY d.id"
                )
            )
        ).all()
    policy = DispatchPolicy().version
    expected = ("cancelled", "repaid_after_confirmation", "repayment_recheck", policy, NOW)
    assert [tuple(r) for r in decided] == [
        (x, 1, "L1", "email", "debtor", *expected, None, "cancelled", 1, *expected[1:3], NOW)
        for x in ("C2", "C1")
    ]

    await repayments._handle_poll(
        poll_of([lending.record_for(repaid("L1", "R1"), event_id="pay-1")])
    )
    other = repaid("L1", "R1", amount=Decimal("20"))
    await repayments._handle_poll(poll_of([lending.record_for(other, event_id="pay-1")]))
    async with notifier.runtime.engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM contact_decisions")) == 2
        topics = (await conn.execute(text("SELECT unnest(topics) FROM outbox"))).scalars()
        assert sorted(topics) == sorted([Topic.CONTACT_OUTCOMES.value] * 2 + [Topic.DLQ.value])


async def test_a_repayment_is_stored_with_the_loans_waiting_commands_read_and_locked(
    notifier: Notifier, database_url: str
) -> None:
    """``record_repayment``: one statement stores the repayment (completing a reversal seen
    first, never moving the moment it was received) and returns the loan's commands not
    yet handed to a channel, in the order issued, locked against the dispatcher until the
    transaction ends; nothing else is returned or locked."""
    await notifier.deliver(command("C1", "L1"), "cmd-1")
    await notifier.deliver(command("C2", "L1", issued_at=NOW - timedelta(minutes=5)), "cmd-2")
    await notifier.deliver(command("C3", "L1"), "cmd-3")
    await notifier.deliver(command("C4", "L2"), "cmd-4")
    async with notifier.runtime.engine.begin() as conn:
        await conn.execute(
            dispatches.update().where(dispatches.c.command_id == "C3").values(status="sent")
        )
        await conn.execute(
            dispatches.update().where(dispatches.c.command_id == "C1").values(status="deferred")
        )
    await notifier.deliver(
        c.RepaymentReversed(
            repayment_id="R1",
            loan_id="L1",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("1000"),
            reversed_at=NOW,
        ),
        "rev-1",
    )
    received = NOW - timedelta(minutes=2)
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with notifier.runtime.engine.begin() as conn:
            repo = DispatchRepository(conn)
            repayment, waiting = await repo.record_repayment(
                repayment_id="R1",
                loan_id="L1",
                currency="CNY",
                amount=Decimal("10"),
                received_at=received,
                now=NOW,
            )
            assert repayment == Repayment("R1", received, True)
            assert [(d.command_id, d.status.value) for d in waiting] == [
                ("C2", "pending"),
                ("C1", "deferred"),
            ]
            assert waiting[1].request == to_request(command("C1", "L1"))
            async with other.transaction():
                for command_id, locked in (
                    ("C1", True),
                    ("C2", True),
                    ("C3", False),
                    ("C4", False),
                ):
                    lock = (
                        "SELECT 1 FROM notifier.dispatches WHERE command_id = $1 FOR UPDATE NOWAIT"
                    )
                    if locked:
                        with pytest.raises(asyncpg.LockNotAvailableError):
                            async with other.transaction():
                                await other.execute(lock, command_id)
                    else:
                        async with other.transaction():
                            await other.execute(lock, command_id)
            # Nothing waits for L2's repayment once its command is gone; a replay of L1's
            # keeps the first moment received.
            assert (
                await repo.record_repayment(
                    repayment_id="R1",
                    loan_id="L1",
                    currency="CNY",
                    amount=Decimal("10"),
                    received_at=NOW,
                    now=NOW,
                )
            )[0] == Repayment("R1", received, True)
            await conn.execute(
                dispatches.update().where(dispatches.c.command_id == "C4").values(status="sent")
            )
            assert await repo.record_repayment(
                repayment_id="R2",
                loan_id="L2",
                currency="CNY",
                amount=Decimal("10"),
                received_at=NOW,
                now=NOW,
            ) == (Repayment("R2", NOW, False), [])
    finally:
        await other.close()


async def test_decisions_along_the_outbox_row_are_the_rows_record_writes(
    notifier: Notifier,
) -> None:
    """``DispatchRepository.decisions`` (run along the outbox row) leaves each dispatch and
    its audit trail exactly as ``record`` does, with or without a due time; a dispatch in
    flight is refused (its attempt would need settling)."""
    for n in range(4):
        await notifier.deliver(command(f"C{n}", f"L{n}"), f"cmd-{n}")
    later = NOW + timedelta(hours=3)
    async with notifier.runtime.engine.begin() as conn:
        repo = DispatchRepository(conn)
        tx = Tx(
            conn=conn,
            now=NOW,
            source="test",
            topic_prefix="",
            outbox=outbox,
            schema="notifier",
        )
        found = {d.command_id: d for n in range(4) for d in await repo.cancellable(f"L{n}")}

        def decision(command_id: str, due_at: datetime | None) -> DecisionRecord:
            return DecisionRecord(
                dispatch=found[command_id],
                decision="deferred" if due_at else "cancelled",
                reason="r",
                rule="x.y",
                policy_version="p1",
                at=NOW,
                due_at=due_at,
            )

        await repo.record(decision("C0", None), status=DispatchStatus.CANCELLED)
        await repo.record(decision("C1", later), status=DispatchStatus.DEFERRED)
        await flush(
            tx, along=repo.decisions([decision("C2", None)], status=DispatchStatus.CANCELLED)
        )
        await flush(
            tx, along=repo.decisions([decision("C3", later)], status=DispatchStatus.DEFERRED)
        )
        sending = replace(found["C0"], status=DispatchStatus.SENDING)
        with pytest.raises(ValueError, match="in flight"):
            repo.decisions(
                [replace(decision("C0", None), dispatch=sending)], status=DispatchStatus.CANCELLED
            )
    async with notifier.runtime.engine.connect() as conn:
        rows = {
            r.command_id: r
            for r in await conn.execute(
                text(
                    "SELECT p.command_id, p.status, p.due_at AS p_due_at, p.decision_seq,"
                    " p.reason AS p_reason, p.rule AS p_rule, p.updated_at, p.last_error,"
                    " d.seq, d.channel, d.recipient, d.decision, d.reason, d.rule,"
                    " d.policy_version, d.at, d.due_at"
                    " FROM dispatches p JOIN contact_decisions d USING (command_id)"
                )
            )
        }
    assert len(rows) == 4
    for one_by_one, along in (("C0", "C2"), ("C1", "C3")):
        assert tuple(rows[one_by_one])[1:] == tuple(rows[along])[1:]
    assert rows["C3"].p_due_at == later
    assert rows["C2"].status == "cancelled"


async def test_a_case_event_the_notifier_has_no_use_for_is_neither_claimed_nor_committed(
    notifier: Notifier,
) -> None:
    """The case topic's openings come for every loan, and the notifier does nothing with
    them: no inbox row (nor a transaction for a poll of nothing else), but counted, and
    their neighbours handled."""
    await put_details(notifier)
    opened = c.CaseOpened(
        case_id="K1",
        loan_id="L1",
        borrower_id="B1",
        stage="warning",
        policy_version="p1",
        opened_at=NOW,
    )
    loop = notifier.runtime.loops[0]
    topic = lending.record_for(opened, event_id="open-1")[0]
    ignored = metrics.MESSAGES_CONSUMED.labels(loop._group, topic, "ignored")
    before = ignored._value.get()
    begun: list[object] = []

    def on_begin(conn: object) -> None:
        begun.append(conn)

    engine = notifier.runtime.engine.sync_engine
    event.listen(engine, "begin", on_begin)
    try:
        await loop._handle_poll(poll_of([lending.record_for(opened, event_id="open-1")]))
    finally:
        event.remove(engine, "begin", on_begin)
    assert begun == []  # the poll opened no transaction at all
    async with notifier.runtime.engine.connect() as conn:
        assert (await conn.execute(_CLAIMED)).scalars().all() == []
    await loop._handle_poll(
        poll_of(
            [
                lending.record_for(opened, event_id="open-1"),
                lending.record_for(command("C1", "L1"), event_id="cmd-1"),
            ]
        )
    )
    async with notifier.runtime.engine.connect() as conn:
        assert (await conn.execute(_CLAIMED)).scalars().all() == ["cmd-1"]
    assert await notifier.status("C1") == "pending"
    assert ignored._value.get() == before + 2


async def test_only_a_newly_stored_command_wakes_the_dispatcher(notifier: Notifier) -> None:
    handlers = NotifierHandlers(DispatchPolicy())
    assert not handlers.new_commands()
    await notifier.deliver(command("C1"), "e1", handlers)
    assert handlers.new_commands()
    assert not handlers.new_commands()  # taken
    await notifier.deliver(command("C1"), "e1-again", handlers)  # a known command
    await notifier.deliver(
        c.RepaymentReceived(
            repayment_id="R9",
            loan_id="L9",
            currency="CNY",
            amount=Decimal("10"),
            outstanding_balance_after=Decimal("0"),
            received_at=NOW,
        ),
        "e2",
        handlers,
    )
    assert not handlers.new_commands()


async def test_two_dispatchers_never_take_the_same_row(
    notifier: Notifier, smtp_sink: SmtpSink, database_url: str
) -> None:
    await put_details(notifier)
    for i in range(40):
        await notifier.deliver(command(f"C{i:02d}", f"L{i:02d}"), f"e{i}")
    replicas = [
        bootstrap.build_runtime(
            _settings(database_url, smtp_sink.port, dispatch_batch=5), clock=notifier.clock
        )
        for _ in range(2)
    ]
    claimed = [0, 0]
    try:
        for _ in range(20):
            got = await asyncio.gather(*(r.state["dispatcher"].dispatch_once() for r in replicas))
            claimed = [a + b for a, b in zip(claimed, got, strict=True)]
            if sum(got) == 0:
                break
    finally:
        for r in replicas:
            await r.engine.dispose()
    assert sum(claimed) == 40, claimed
    assert all(claimed), claimed
    assert len(smtp_sink.message_ids) == 40
    assert smtp_sink.doubled() == {}
    assert [o.outcome for o in await notifier.outcomes()] == ["sent"] * 40


class Flaky:
    """A channel that fails the first ``failures`` calls with a transient error."""

    def __init__(self, failures: int, *, permanent: bool = False) -> None:
        self.failures = failures
        self.permanent = permanent
        self.calls: list[str] = []

    async def send(self, message: OutgoingMessage) -> Delivery:
        self.calls.append(message.command_id)
        if len(self.calls) <= self.failures:
            raise SendError("provider_503", permanent=self.permanent)
        return Delivery()


async def _with_channel(
    database_url: str, smtp_port: int, channel: Flaky, **extra: Any
) -> tuple[Runtime, Dispatcher]:
    runtime = bootstrap.build_runtime(
        _settings(database_url, smtp_port, **extra),
        clock=FixedClock(NOW),
        channels={"email": channel, "sms": channel, "voice": channel, "letter": channel},
    )
    dispatcher: Dispatcher = runtime.state["dispatcher"]
    return runtime, dispatcher


async def test_transient_failures_are_retried_then_fail_for_good(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1"), "e1")
    flaky = Flaky(failures=10)
    runtime, dispatcher = await _with_channel(
        database_url, smtp_sink.port, flaky, send_max_attempts=3
    )
    try:
        for _ in range(5):
            await dispatcher.dispatch_once()
    finally:
        await runtime.engine.dispose()
    assert flaky.calls == ["C1"] * 3
    assert await notifier.status("C1") == "failed"
    assert [(o.outcome, o.reason, o.rule) for o in await notifier.outcomes()] == [
        ("failed", "provider_503", "channel.email")
    ]


class Bulk:
    """A channel with a bulk call: each call's command ids, and per-call outcomes."""

    def __init__(self, refuse: frozenset[str] = frozenset(), *, broken: int = 0) -> None:
        self.refuse = refuse  # command ids refused (transient) on their first call
        self.broken = broken  # calls refused as a whole, nothing handed over
        self.calls: list[list[str]] = []

    async def send(self, message: OutgoingMessage) -> Delivery:
        raise AssertionError("a channel with a bulk call gets the pass in one call")

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[Delivery | SendError]:
        self.calls.append([m.command_id for m in messages])
        if len(self.calls) <= self.broken:
            # Refused as a whole, surely unsent (a call that raises instead may have sent:
            # see test_a_send_cut_off_mid_call_is_not_retried_but_settled_like_a_crash).
            return [SendError("provider_unreachable", permanent=False)] * len(messages)
        first = len(self.calls) == 1 + self.broken
        return [
            SendError("provider_503", permanent=False)
            if first and m.command_id in self.refuse
            else Delivery(provider_ref=f"p-{n}")
            for n, m in enumerate(messages)
        ]


async def test_a_bulk_channel_gets_a_pass_in_one_call_and_each_outcome_counts_alone(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    for i in range(6):
        await put_details(notifier, f"B{i}")
        await notifier.deliver(command(f"C{i}", f"L{i}", f"B{i}"), f"e{i}")
    bulk = Bulk(refuse=frozenset({"C2"}), broken=1)
    runtime = bootstrap.build_runtime(
        _settings(database_url, smtp_sink.port),
        clock=notifier.clock,
        channels={"email": bulk, "sms": bulk, "voice": bulk, "letter": bulk},
    )
    dispatcher: Dispatcher = runtime.state["dispatcher"]
    try:
        # First call refused as a whole: nothing handed over, every row waits to retry.
        assert await dispatcher.dispatch_once() == 6
        assert {await notifier.status(f"C{i}") for i in range(6)} == {"pending"}
        assert await dispatcher.dispatch_once() == 6
        assert [await notifier.status(f"C{i}") for i in range(6)] == [
            "sent",
            "sent",
            "pending",
            "sent",
            "sent",
            "sent",
        ]
        assert await dispatcher.dispatch_once() == 1
    finally:
        await runtime.engine.dispose()
    assert bulk.calls == [[f"C{i}" for i in range(6)]] * 2 + [["C2"]]
    assert await notifier.status("C2") == "sent"
    assert sorted(o.command_id for o in await notifier.outcomes() if o.outcome == "sent") == [
        f"C{i}" for i in range(6)
    ]


async def test_a_row_abandoned_mid_send_is_in_doubt_after_its_lease_and_not_sent_again(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1"), "e1")
    hanging = Flaky(failures=0)
    runtime, dispatcher = await _with_channel(database_url, smtp_sink.port, hanging)
    try:
        # The first dispatcher marks the row "sending" and dies: whether it handed the
        # e-mail over is not known, and the SMTP relay cannot be asked.
        planned, _, claimed = await dispatcher._decide_due()
        assert claimed == 1
        assert await notifier.status("C1") == "sending"
        assert await notifier.dispatcher.dispatch_once() == 0  # leased: not taken
        notifier.clock.set(NOW + timedelta(seconds=121))
        assert await notifier.dispatcher.dispatch_once() == 1
        assert await notifier.status("C1") == "in_doubt"
        # No timer takes it again.
        notifier.clock.set(NOW + timedelta(days=1))
        assert await notifier.dispatcher.dispatch_once() == 0
        # The late finisher finds the row owned by nobody and changes nothing.
        await dispatcher._finish_all([_Sent(planned[0], None, None)])
    finally:
        await runtime.engine.dispose()
    assert smtp_sink.messages == []
    assert await notifier.status("C1") == "in_doubt"
    assert [(o.outcome, o.reason, o.rule) for o in await notifier.outcomes()] == [
        ("in_doubt", "outcome_unknown_after_handover", "channel.email.in_doubt")
    ]


class Cut(Flaky):
    """A channel whose first call breaks off in a way that says nothing of the outcome."""

    async def send(self, message: OutgoingMessage) -> Delivery:
        self.calls.append(message.command_id)
        if len(self.calls) == 1:
            raise ConnectionResetError("peer went away mid-DATA")
        return Delivery()


async def test_a_send_cut_off_mid_call_is_not_retried_but_settled_like_a_crash(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1"), "e1")
    cut = Cut(failures=0)
    runtime = bootstrap.build_runtime(
        _settings(database_url, smtp_sink.port),
        clock=notifier.clock,
        channels={"email": cut, "sms": cut, "voice": cut, "letter": cut},
    )
    dispatcher: Dispatcher = runtime.state["dispatcher"]
    try:
        assert await dispatcher.dispatch_once() == 1
        assert await notifier.status("C1") == "sending"  # leased, in flight as far as we know
        notifier.clock.set(NOW + timedelta(seconds=60))
        assert await dispatcher.dispatch_once() == 0
        notifier.clock.set(NOW + timedelta(seconds=121))
        assert await dispatcher.dispatch_once() == 1
        notifier.clock.set(NOW + timedelta(hours=1))
        assert await dispatcher.dispatch_once() == 0
    finally:
        await runtime.engine.dispose()
    assert cut.calls == ["C1"]
    assert await notifier.status("C1") == "in_doubt"


async def test_an_operator_may_order_a_contact_in_doubt_sent_again(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1"), "e1")
    runtime, dispatcher = await _with_channel(database_url, smtp_sink.port, Flaky(failures=0))
    try:
        await dispatcher._decide_due()  # handed over (or not), then a crash
    finally:
        await runtime.engine.dispose()
    notifier.clock.set(NOW + timedelta(seconds=121))
    assert await notifier.dispatcher.dispatch_once() == 1
    assert await notifier.status("C1") == "in_doubt"

    refused = await notifier.http.post("/v1/contacts/C1/resend", json={"reason": "a\x00b"})
    assert refused.status_code == 422
    unknown = await notifier.http.post("/v1/contacts/C9/resend", json={"reason": "lost"})
    assert unknown.status_code == 404
    ordered = await notifier.http.post(
        "/v1/contacts/C1/resend", json={"reason": "relay log: never delivered"}
    )
    assert ordered.status_code == 204, ordered.text
    assert await notifier.dispatcher.dispatch_once() == 1
    assert await notifier.status("C1") == "sent"
    assert len(smtp_sink.messages) == 1
    again = await notifier.http.post("/v1/contacts/C1/resend", json={"reason": "twice?"})
    assert again.status_code == 404  # no longer in doubt
    page = (await notifier.http.get("/v1/contacts", params={"loan_id": "L1"})).json()
    assert [(d["decision"], d["reason"], d["rule"]) for d in page["decisions"]] == [
        ("in_doubt", "outcome_unknown_after_handover", "channel.email.in_doubt"),
        ("resend_ordered", "relay log: never delivered", "operator:dev-client"),
        ("sent", "all_checks_passed", "CN.contact_window"),
    ]


async def test_a_validation_notice_in_doubt_is_carried_again_by_the_next_email(
    notifier: Notifier, database_url: str, smtp_sink: SmtpSink
) -> None:
    """Reg F: until a notice is proven out, the person's other contacts wait for it; one
    in doubt must not hold them for ever, so the next e-mail carries it."""
    us = {"jurisdiction": "US", "currency": "USD", "borrower_time_zone": "America/New_York"}
    morning = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)  # 09:00 in New York
    notifier.clock.set(morning)
    await put_details(notifier, language="en")
    await notifier.deliver(command("C1", at=morning, **us), "e1")
    hanging = Flaky(failures=0)
    runtime = bootstrap.build_runtime(
        _settings(database_url, smtp_sink.port),
        clock=notifier.clock,
        channels={"email": hanging, "sms": hanging, "voice": hanging, "letter": hanging},
    )
    dispatcher: Dispatcher = runtime.state["dispatcher"]
    try:
        planned, _, _ = await dispatcher._decide_due()  # the notice goes out, then a crash
        assert planned[0].decision.validation_notice
    finally:
        await runtime.engine.dispose()
    notifier.clock.set(morning + timedelta(seconds=121))
    assert await notifier.dispatcher.dispatch_once() == 1
    assert await notifier.status("C1") == "in_doubt"
    await notifier.deliver(command("C2", at=notifier.clock.now(), **us), "e2")
    assert await notifier.dispatcher.dispatch_once() == 1
    assert await notifier.status("C2") == "sent"
    assert len(smtp_sink.messages) == 1
    assert b"C2@" in smtp_sink.messages[0][1]


class Asked(Flaky):
    """A channel that can be asked by idempotency key, with scripted answers."""

    def __init__(self, answers: list[Found | NotFound | SendError]) -> None:
        super().__init__(failures=0)
        self.answers = answers
        self.asked: list[str] = []

    async def lookup(self, command_id: str, channel: str) -> Found | NotFound:
        self.asked.append(command_id)
        answer = self.answers.pop(0)
        if isinstance(answer, SendError):
            raise answer
        return answer


@pytest.mark.parametrize(
    ("answers", "status", "sends"),
    [
        # Found: settled as sent with what the provider knows, never sent again.
        ([Found("delivered", "msg-1")], "sent", 0),
        # Not found: it reached nobody, so it is decided afresh and sent.
        ([NotFound()], "sent", 1),
        # The lookup failed: asked again later (asking sends nothing), then found.
        ([SendError("provider_503", permanent=False), Found("sent", "msg-1")], "sent", 0),
    ],
)
async def test_a_row_abandoned_mid_send_is_settled_by_asking_a_channel_that_can_be_asked(
    notifier: Notifier,
    database_url: str,
    smtp_sink: SmtpSink,
    answers: list[Found | NotFound | SendError],
    status: str,
    sends: int,
) -> None:
    await put_details(notifier)
    await notifier.deliver(command("C1", channel="sms"), "e1")
    asked = Asked(list(answers))
    runtime = bootstrap.build_runtime(
        _settings(database_url, smtp_sink.port),
        clock=notifier.clock,
        channels={"email": asked, "sms": asked, "voice": asked, "letter": asked},
    )
    dispatcher: Dispatcher = runtime.state["dispatcher"]
    try:
        await dispatcher._decide_due()  # marked "sending", then the dispatcher dies
        for step in range(1, 4):
            notifier.clock.set(NOW + timedelta(seconds=121 * step))
            await dispatcher.dispatch_once()
    finally:
        await runtime.engine.dispose()
    assert await notifier.status("C1") == status
    assert asked.calls == ["C1"] * sends
    assert asked.asked == ["C1"] * len(answers)
    assert [o.outcome for o in await notifier.outcomes()].count("sent") == 1


async def test_a_refused_recipient_fails_at_once_and_the_address_stays_out_of_logs(
    notifier: Notifier, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refusing = SmtpSink(refuse="550 5.1.1 <{address}> no such mailbox").start()
    runtime = bootstrap.build_runtime(_settings(database_url, refusing.port), clock=notifier.clock)
    try:
        await put_details(notifier)
        await notifier.deliver(command("C1"), "e1")
        await runtime.state["dispatcher"].dispatch_once()
    finally:
        refusing.stop()
        await runtime.engine.dispose()
    assert await notifier.status("C1") == "failed"
    assert [(o.outcome, o.reason) for o in await notifier.outcomes()] == [("failed", "smtp_550")]
    ours = "\n".join(
        f"{r.getMessage()} {vars(r)}" for r in caplog.records if not r.name.startswith("mail.log")
    )
    assert "zhang.san" not in ours
