"""Lawful dispatch against the real PostgreSQL, a real SMTP server and a real HTTP provider
double on loopback (and the real Kafka broker where messages cross it): caps across
channels, restarts and racing replicas; holds; opt-outs; the validation notice; letters."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import FixedClock
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx, flush
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from notifier.adapters.letters import open_letter
from notifier.adapters.provider_http import HttpProviderChannel
from notifier.adapters.tables import contact_attempts, dispatches, letters, outbox
from notifier.app.dispatcher import Dispatcher
from notifier.app.handlers import NotifierHandlers
from notifier.app.ports import Channel
from notifier.domain.model import ChannelName
from notifier.domain.policy import DispatchPolicy
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from scripts import lending
from scripts.infra import producer
from tests.provider_double import ProviderDouble
from tests.smtp_sink import SmtpSink
from tests.support import eventually, migrate, read_topic

# 12:00 in New York, 01:00 the next day in Shanghai.
NOON_NY = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
# 10:00 in Shanghai.
TEN_SH = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
US_PHONE, CN_PHONE = "+12125550100", "+8613812341234"


@dataclass
class Stack:
    database_url: str
    smtp_port: int
    provider: ProviderDouble
    clock: FixedClock
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    runtimes: list[Runtime] = field(default_factory=list)

    def settings(self, **extra: Any) -> NotifierSettings:
        return NotifierSettings(
            database_url=self.database_url,
            smtp_port=self.smtp_port,
            send_retry_backoff_s=0,
            provider_backoff_s=0,
            **extra,
        )

    def replica(self, **extra: Any) -> Runtime:
        """A notifier over the same database (a restart, or another replica)."""
        client = httpx.AsyncClient(base_url=self.provider.base_url, timeout=5)
        self.clients.append(client)
        phone = HttpProviderChannel(client, backoff_s=0)
        runtime = bootstrap.build_runtime(self.settings(**extra), clock=self.clock)
        dispatcher: Dispatcher = runtime.state["dispatcher"]
        channels: dict[ChannelName, Channel] = dict(dispatcher._channels)
        channels.update({"sms": phone, "voice": phone})
        dispatcher._channels = channels
        self.runtimes.append(runtime)
        return runtime

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.engine.dispose()
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def env(
    database_url: str, smtp_sink: SmtpSink, provider_double: ProviderDouble
) -> AsyncIterator[Stack]:
    await migrate(bootstrap.MIGRATIONS, database_url, "notifier")
    s = Stack(database_url, smtp_sink.port, provider_double, FixedClock(NOON_NY))
    try:
        yield s
    finally:
        await s.close()


def dispatcher_of(runtime: Runtime) -> Dispatcher:
    d: Dispatcher = runtime.state["dispatcher"]
    return d


async def deliver(runtime: Runtime, clock: FixedClock, message: c.Message, event_id: str) -> None:
    routes = NotifierHandlers(DispatchPolicy()).routes()
    async with runtime.engine.begin() as conn:
        tx = Tx(
            conn=conn,
            now=clock.now(),
            source="test",
            topic_prefix="",
            outbox=outbox,
            schema="notifier",
        )
        await routes[type(message)](
            tx,
            Envelope(
                id=event_id,
                type="test",
                source="test",
                time=clock.now(),
                subject=str(getattr(message, "loan_id", "")),
                data=message,
            ),
        )
        await flush(tx)


async def outcomes(runtime: Runtime) -> list[c.ContactOutcome]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(func.unnest(outbox.c.payloads).label("value")).order_by(outbox.c.id)
        )
        return [c.ContactOutcome.model_validate(json.loads(r.value)) for r in rows]


async def statuses(runtime: Runtime) -> dict[str, tuple[str, str, str]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(
                dispatches.c.command_id, dispatches.c.status, dispatches.c.reason, dispatches.c.rule
            )
        )
        return {r.command_id: (r.status, r.reason, r.rule) for r in rows}


def us_command(
    command_id: str,
    channel: str,
    *,
    at: datetime,
    loan_id: str = "L-US",
    borrower_id: str = "B-US",
    **changes: Any,
) -> c.ContactCommand:
    fields: dict[str, Any] = {
        "command_id": command_id,
        "intent_id": f"i-{command_id}",
        "case_id": f"c-{loan_id}",
        "loan_id": loan_id,
        "borrower_id": borrower_id,
        "recipient": "debtor",
        "channel": channel,
        "stage": "warning",
        "template": "warning-reminder",
        "currency": "USD",
        "amount_due": Decimal("250.00"),
        "confirmation_id": "conf-1",
        "ledger_watermark": 3,
        "confirmed_at": at - timedelta(minutes=1),
        # Long enough to outlive a cap's deferral in these tests.
        "confirmation_valid_until": at + timedelta(days=10),
        "borrower_time_zone": "America/New_York",
        "jurisdiction": "US",
        "issued_at": at - timedelta(minutes=1),
    }
    fields.update(changes)
    return c.ContactCommand(**fields)


def cn_command(
    command_id: str,
    channel: str,
    *,
    at: datetime,
    loan_id: str = "L-CN",
    borrower_id: str = "B-CN",
    **changes: Any,
) -> c.ContactCommand:
    return us_command(
        command_id,
        channel,
        at=at,
        loan_id=loan_id,
        borrower_id=borrower_id,
        currency="CNY",
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        **changes,
    )


async def put_details(http: httpx.AsyncClient, borrower_id: str, **body: Any) -> None:
    response = await http.put(f"/v1/borrowers/{borrower_id}/contact-details", json=body)
    assert response.status_code == 204, response.text


@asynccontextmanager
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = bootstrap.create_app(runtime, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://notifier",
        headers=dev_headers(["cases:read", "contacts:write"]),
    ) as http:
        yield http


# --- caps -----------------------------------------------------------------------------------------


async def test_us_caps_count_calls_and_texts_together_and_survive_a_restart(
    env: Stack, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = env.replica()
    async with api(first) as http:
        await put_details(
            http,
            "B-US",
            language="en",
            email="pat@example.com",
            phone=US_PHONE,
            postal_address="1 Main St, Springfield",
        )
    now = env.clock.now()
    # Before anything else: the validation notice. The SMS waits for it; the e-mail is it.
    await deliver(first, env.clock, us_command("S0", "sms", at=now), "e-s0")
    await deliver(first, env.clock, us_command("E0", "email", at=now), "e-e0")
    await dispatcher_of(first).dispatch_once()
    state = await statuses(first)
    assert state["E0"] == ("sent", "validation_notice", "US.reg_f_validation_notice")
    assert state["S0"] == ("deferred", "awaiting_validation_notice", "US.reg_f_validation_notice")
    assert b"is a debt collector" in smtp_sink.messages[0][1]
    # The notice going out woke the SMS that waited for it.
    await dispatcher_of(first).dispatch_once()
    assert (await statuses(first))["S0"][0] == "sent"

    # Four calls (unanswered: no conversation, no quiet period) and two more texts: 7.
    env.provider.default_call = "unanswered"
    for i in range(4):
        await deliver(first, env.clock, us_command(f"V{i}", "voice", at=now), f"e-v{i}")
    for i in (1, 2):
        await deliver(first, env.clock, us_command(f"S{i}", "sms", at=now), f"e-s{i}")
    # A call in progress may become a conversation, so the next phone contact about the
    # debt waits until it has settled: a few rounds, minutes apart.
    for _ in range(20):
        await dispatcher_of(first).dispatch_once()
        if all(v[0] == "sent" for v in (await statuses(first)).values()):
            break
        env.clock.set(env.clock.now() + timedelta(minutes=3))
    assert {k for k, v in (await statuses(first)).items() if v[0] == "sent"} == {
        "E0",
        "S0",
        "S1",
        "S2",
        "V0",
        "V1",
        "V2",
        "V3",
    }
    assert len(env.provider.sent_keys()) == 7

    # A restart: a new runtime, the same database. The cap still stands, across channels.
    await first.engine.dispose()
    env.clock.set(env.clock.now() + timedelta(hours=1))
    second = env.replica()
    await deliver(second, env.clock, us_command("V9", "voice", at=env.clock.now()), "e-v9")
    await deliver(second, env.clock, us_command("S9", "sms", at=env.clock.now()), "e-s9")
    await dispatcher_of(second).dispatch_once()
    state = await statuses(second)
    assert state["V9"] == ("deferred", "frequency_cap", "US.reg_f_7_in_7")
    assert state["S9"] == ("deferred", "frequency_cap", "US.reg_f_7_in_7")
    async with api(second) as http:
        page = (await http.get("/v1/contacts", params={"loan_id": "L-US"})).json()
    deferred = [d for d in page["decisions"] if d["command_id"] == "V9"]
    # The oldest attempt (S0, at noon) leaves the 7-day window at noon a week later.
    assert deferred[0]["due_at"] == "2026-11-30T17:00:00Z"
    sent_calls = [
        d for d in page["decisions"] if d["command_id"].startswith("V") and d["decision"] == "sent"
    ]
    assert {d["delivery"] for d in sent_calls} == {"unanswered"}

    # A week later one slot is free (S0's): one of the two goes, the other waits again.
    env.clock.set(datetime(2026, 11, 30, 17, 0, tzinfo=UTC))
    await dispatcher_of(second).dispatch_once()
    state = await statuses(second)
    assert sorted(state[k][0] for k in ("V9", "S9")) == ["deferred", "sent"]
    assert len(env.provider.sent_keys()) == 8
    assert env.provider.doubled() == {}
    logged = "\n".join(
        f"{r.getMessage()} {vars(r)}" for r in caplog.records if not r.name.startswith("mail.log")
    )
    for secret in (US_PHONE, US_PHONE[2:], "pat@example.com", "Main St"):
        assert secret not in logged


async def test_cn_connected_calls_cap_holds_across_a_restart(env: Stack) -> None:
    env.clock.set(TEN_SH)
    first = env.replica()
    async with api(first) as http:
        await put_details(http, "B-CN", language="zh-CN", phone=CN_PHONE)
    now = env.clock.now()
    for i in range(3):  # answered by default: three conversations today
        await deliver(
            first, env.clock, cn_command(f"V{i}", "voice", at=now, loan_id=f"L-CN-{i}"), f"e{i}"
        )
    await dispatcher_of(first).dispatch_once()
    await first.engine.dispose()

    second = env.replica()
    env.clock.set(now + timedelta(hours=2))
    await deliver(second, env.clock, cn_command("V3", "voice", at=env.clock.now()), "e3")
    await dispatcher_of(second).dispatch_once()
    assert (await statuses(second))["V3"] == (
        "deferred",
        "frequency_cap",
        "CN.connected_calls_per_day",
    )
    async with second.engine.connect() as conn:
        due = await conn.scalar(select(dispatches.c.due_at).where(dispatches.c.command_id == "V3"))
    assert due == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 08:00 tomorrow in Shanghai
    assert [o.outcome for o in await outcomes(second) if o.command_id == "V0"] == [
        "sent",
        "answered",
    ]


async def test_two_replicas_racing_never_exceed_a_cap_and_never_send_one_command_twice(
    env: Stack,
) -> None:
    env.clock.set(TEN_SH)
    seed = env.replica()
    async with api(seed) as http:
        await put_details(http, "B-CN", language="zh-CN", phone=CN_PHONE)
        for i in range(12):
            await put_details(http, f"B-{i}", language="zh-CN", phone=f"+86139000000{i:02d}")
    now = env.clock.now()
    # Eight calls to one debtor, over two of their loans: at most three may connect today.
    for i in range(8):
        await deliver(
            seed, env.clock, cn_command(f"V{i}", "voice", at=now, loan_id=f"L-CN-{i % 2}"), f"v{i}"
        )
    # And twelve texts to twelve people: each must go exactly once.
    for i in range(12):
        await deliver(
            seed,
            env.clock,
            cn_command(f"S{i}", "sms", at=now, loan_id=f"L-{i}", borrower_id=f"B-{i}"),
            f"s{i}",
        )
    # The first answer is lost on the way: the adapter retries with the same key.
    env.provider.script(["lost:503"])
    replicas = [env.replica(dispatch_batch=2), env.replica(dispatch_batch=3)]
    for _ in range(30):
        claimed = await asyncio.gather(*(dispatcher_of(r).dispatch_once() for r in replicas))
        if sum(claimed) == 0:
            break
    assert env.provider.doubled() == {}
    sent = env.provider.sent_keys()
    calls = [k for k in sent if k.startswith("V")]
    assert len(calls) == 3, calls
    assert sorted(k for k in sent if k.startswith("S")) == sorted(f"S{i}" for i in range(12))
    replays = [k for k, _, replayed in env.provider.requests if replayed]
    assert len(replays) == 1

    # Once the calls' results are in, whatever waited sees the cap, not a free slot.
    env.clock.set(now + timedelta(minutes=5))
    for _ in range(5):
        await asyncio.gather(*(dispatcher_of(r).dispatch_once() for r in replicas))
    state = await statuses(seed)
    held_back = {k: v for k, v in state.items() if k.startswith("V") and v[0] != "sent"}
    assert len(held_back) == 5
    assert set(held_back.values()) == {("deferred", "frequency_cap", "CN.connected_calls_per_day")}
    assert len([k for k in env.provider.sent_keys() if k.startswith("V")]) == 3
    async with seed.engine.connect() as conn:
        counted = (
            await conn.execute(
                select(contact_attempts.c.result).where(contact_attempts.c.channel == "voice")
            )
        ).all()
    assert sorted(r.result for r in counted) == ["answered"] * 3


# --- holds, re-check, recipients, opt-outs: through Kafka -----------------------------------------


@pytest.fixture
async def live(
    env: Stack, topic_prefix: str, stack: dict[str, str]
) -> AsyncIterator[tuple[Runtime, lending.Lender]]:
    settings = env.settings(
        topic_prefix=topic_prefix,
        kafka_bootstrap=stack["kafka_bootstrap"],
        provider_base_url=env.provider.base_url,
        dispatch_safety_poll_s=0.2,
    )
    runtime = bootstrap.build_runtime(settings, clock=env.clock)
    p = await producer(stack["kafka_bootstrap"])
    await runtime.start()
    try:
        yield runtime, lending.Lender(p, topic_prefix)
    finally:
        await runtime.stop()
        await p.stop()


async def test_holds_repayments_and_party_rules_arrive_over_kafka(
    env: Stack, live: tuple[Runtime, lending.Lender], topic_prefix: str, stack: dict[str, str]
) -> None:
    runtime, lender = live
    # 22:30 in Shanghai: everything is deferred to 08:00, which gives the news time to come.
    night = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    env.clock.set(night)
    async with api(runtime) as http:
        await put_details(
            http,
            "B-CN",
            language="zh-CN",
            phone=CN_PHONE,
            email="zs@example.com",
            guarantor={"name": "李四", "phone": "+8613912345678"},
        )
    held = cn_command("C-held", "sms", at=night, loan_id="L-held")
    paid = cn_command("C-paid", "email", at=night, loan_id="L-paid")
    early_guarantor = cn_command(
        "C-guar",
        "sms",
        at=night,
        loan_id="L-guar",
        recipient="guarantor",
        template="guarantor-notice",
        stage="formal_notice",
    )
    for command in (held, paid, early_guarantor):
        await lender.publish(command)
    await eventually(lambda: _all_decided(runtime, 3))
    state = await statuses(runtime)
    assert state["C-held"][0] == state["C-paid"][0] == "deferred"
    assert state["C-guar"] == ("blocked", "guarantor_not_party_at_stage", "guarantor_party_stage")

    # A hold from the workflow, and a repayment after the confirmation, before the send.
    await lender.publish(
        c.CaseHeld(
            case_id="c-L-held",
            loan_id="L-held",
            hold_id="H1",
            kind="hardship",
            reason="lost job",
            actor="agent-7",
            held_at=night + timedelta(minutes=1),
        )
    )
    await lender.publish(
        c.RepaymentReceived(
            repayment_id="R1",
            loan_id="L-paid",
            currency="CNY",
            amount=Decimal("50"),
            outstanding_balance_after=Decimal("200"),
            received_at=night + timedelta(minutes=2),
        )
    )
    await eventually(lambda: _status_is(runtime, "C-held", "cancelled"))
    # The repayment stops the deferred command when it arrives, not at its send time.
    await eventually(lambda: _status_is(runtime, "C-paid", "cancelled"))
    env.clock.set(datetime(2026, 11, 24, 0, 0, tzinfo=UTC))  # 08:00 in Shanghai
    dispatcher_of(runtime).wake()
    state = await statuses(runtime)
    assert state["C-held"] == ("cancelled", "case_held_hardship", "case_hold")
    assert state["C-paid"] == ("cancelled", "repaid_after_confirmation", "repayment_recheck")

    # Resumed: a fresh command (issued after the resume) goes out; nothing else did.
    await lender.publish(
        c.CaseResumed(
            case_id="c-L-held",
            loan_id="L-held",
            hold_id="H1",
            reason="new job",
            actor="agent-7",
            resumed_at=env.clock.now() - timedelta(minutes=5),
        )
    )
    await lender.publish(cn_command("C-fresh", "sms", at=env.clock.now(), loan_id="L-held"))
    await eventually(lambda: _status_is(runtime, "C-fresh", "sent"))
    assert env.provider.sent_keys() == ["C-fresh"]

    published = await eventually(
        lambda: _published_outcomes(topic_prefix, stack["kafka_bootstrap"], 6)
    )
    seen = {(o.command_id, o.outcome, o.rule) for o in published}
    assert {
        ("C-held", "cancelled", "case_hold"),
        ("C-paid", "cancelled", "repayment_recheck"),
        ("C-guar", "blocked", "guarantor_party_stage"),
        ("C-fresh", "sent", "CN.contact_window"),
        ("C-fresh", "delivered", "channel.sms"),
    } <= seen


async def _all_decided(runtime: Runtime, n: int) -> bool:
    state = await statuses(runtime)
    return len(state) == n and all(v[0] != "pending" for v in state.values())


async def _status_is(runtime: Runtime, command_id: str, status: str) -> bool:
    return (await statuses(runtime)).get(command_id, ("",))[0] == status


async def _published_outcomes(
    prefix: str, bootstrap_servers: str, at_least: int
) -> list[c.ContactOutcome]:
    found = [
        e.data
        for e in await read_topic(bootstrap_servers, prefix + Topic.CONTACT_OUTCOMES.value)
        if isinstance(e, Envelope) and isinstance(e.data, c.ContactOutcome)
    ]
    return found if len(found) >= at_least else []


# --- opt-outs and do-not-contact over REST -----------------------------------------------------


async def test_opt_outs_and_do_not_contact_are_managed_over_rest(env: Stack) -> None:
    env.clock.set(TEN_SH)
    runtime = env.replica()
    now = env.clock.now()
    async with api(runtime) as http:
        await put_details(http, "B-CN", language="zh-CN", phone=CN_PHONE, email="zs@example.com")
        assert (
            await http.put("/v1/borrowers/B-CN/opt-outs/sms", json={"reason": "replied STOP"})
        ).status_code == 204
        await deliver(runtime, env.clock, cn_command("S1", "sms", at=now), "e1")
        await deliver(runtime, env.clock, cn_command("E1", "email", at=now), "e2")
        await dispatcher_of(runtime).dispatch_once()
        state = await statuses(runtime)
        assert state["S1"] == ("blocked", "opted_out_sms", "channel_opt_out")
        assert state["E1"][0] == "sent"

        prefs = (await http.get("/v1/borrowers/B-CN/contact-preferences")).json()
        assert [(o["party"], o["channel"]) for o in prefs["opt_outs"]] == [("debtor", "sms")]
        assert (await http.delete("/v1/borrowers/B-CN/opt-outs/sms")).status_code == 204
        assert (await http.delete("/v1/borrowers/B-CN/opt-outs/sms")).status_code == 404
        await deliver(runtime, env.clock, cn_command("S2", "sms", at=now), "e3")
        await dispatcher_of(runtime).dispatch_once()
        assert (await statuses(runtime))["S2"][0] == "sent"

        assert (
            await http.put(
                "/v1/borrowers/B-CN/do-not-contact", json={"reason": "cease communication"}
            )
        ).status_code == 204
        await deliver(runtime, env.clock, cn_command("E2", "email", at=now), "e4")
        await deliver(
            runtime, env.clock, cn_command("L2", "letter", at=now, template="formal-notice"), "e5"
        )
        await dispatcher_of(runtime).dispatch_once()
        state = await statuses(runtime)
        assert state["E2"] == state["L2"] == ("blocked", "do_not_contact", "do_not_contact")
        assert (await http.put("/v1/borrowers/B-CN/opt-outs/fax", json={})).status_code == 422


# --- letters --------------------------------------------------------------------------------------


async def test_letters_are_rendered_to_html_and_pdf_and_counted_as_sent_to_print(
    env: Stack,
) -> None:
    runtime = env.replica()
    async with api(runtime) as http:
        await put_details(http, "B-US", language="en", postal_address="1 Main St, Springfield")
        await put_details(http, "B-CN", language="zh-CN", postal_address="北京市朝阳区某路 1 号")
    now = env.clock.now()
    await deliver(
        runtime, env.clock, us_command("LT-US", "letter", at=now, template="formal-notice"), "e1"
    )
    await deliver(
        runtime, env.clock, cn_command("LT-CN", "letter", at=now, template="formal-notice"), "e2"
    )
    await dispatcher_of(runtime).dispatch_once()
    state = await statuses(runtime)
    # The first letter to a US debtor is the validation notice.
    assert state["LT-US"] == ("sent", "validation_notice", "US.reg_f_validation_notice")
    assert state["LT-CN"] == ("sent", "all_checks_passed", "CN.contact_window")
    async with runtime.engine.connect() as conn:
        rows = {
            r.command_id: open_letter(r, runtime.state["pii"])
            for r in await conn.execute(select(letters))
        }
    us_letter, cn_letter = rows["LT-US"], rows["LT-CN"]
    assert us_letter.template == "validation-notice"
    assert us_letter.pdf.startswith(b"%PDF")
    assert cn_letter.pdf.startswith(b"%PDF")
    assert "is a debt collector" in us_letter.html
    assert "Springfield" in us_letter.html
    # The dispute date: 35 days after the notice, on the borrower's calendar.
    assert "2026-12-28" in us_letter.html
    assert "特此正式通知" in cn_letter.html
    assert len(us_letter.pdf_sha256) == 64
