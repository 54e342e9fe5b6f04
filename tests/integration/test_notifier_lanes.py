"""The notifier's two consumer loops against the real broker: one group, each member on its
own topics. Members of a group may subscribe to different topics; this shows the broker
and aiokafka's assignor give each loop every partition of its topics (and none of the
other's), and that both consume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import text

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.runtime import Runtime
from notifier.entrypoints import bootstrap as notifier_boot
from notifier.settings import NotifierSettings
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, running, unused_port, zone_at_midday


@pytest.fixture
async def notifier(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[Runtime]:
    settings = NotifierSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "smtp_port": unused_port(),
        }
    )
    await migrate(notifier_boot.MIGRATIONS, database_url, settings.db_schema)
    async with running(notifier_boot.build_runtime(settings)) as runtime:
        yield runtime


async def _count(runtime: Runtime, sql: str) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)


async def test_each_loop_gets_all_partitions_of_its_topics_and_consumes_them(
    notifier: Runtime, stack: dict[str, str], topic_prefix: str
) -> None:
    contacts, repayments, confirmations = notifier.loops
    now = datetime.now(UTC)
    p = await producer(stack["kafka_bootstrap"])
    try:
        lender = lending.Lender(p, topic_prefix)
        await lender.publish(
            lending.repayment("L-1", Decimal("10.00"), Decimal("990.00"), repayment_id="R-1")
        )
        await lender.publish(
            c.ContactCommand(
                command_id="C-1",
                intent_id="I-1",
                case_id="K-1",
                loan_id="L-2",
                borrower_id="B-2",
                recipient="debtor",
                channel="email",
                stage="warning",
                template="warning-reminder",
                currency="CNY",
                amount_due=Decimal("100.00"),
                confirmation_id="conf-1",
                ledger_watermark=1,
                confirmed_at=now,
                confirmation_valid_until=now + timedelta(minutes=30),
                borrower_time_zone="Asia/Shanghai",
                jurisdiction="CN",
                issued_at=now,
            )
        )
    finally:
        await p.stop()
    await eventually(
        lambda: _count(notifier, "SELECT count(*) FROM repayments WHERE repayment_id = 'R-1'")
    )
    await eventually(
        lambda: _count(notifier, "SELECT count(*) FROM dispatches WHERE command_id = 'C-1'")
    )

    partitions = range(3)  # the topic_prefix fixture's topics
    assert repayments.assigned == {
        TopicPartition(topic_prefix + t.value, n)
        for t in notifier_boot.REPAYMENT_TOPICS
        for n in partitions
    }
    assert contacts.assigned == {
        TopicPartition(topic_prefix + t.value, n)
        for t in notifier_boot.CONTACT_TOPICS
        for n in partitions
    }
    # Nothing was published to its topics: its assignment may come a moment later.
    assert await eventually(
        lambda: (
            confirmations.assigned
            == {
                TopicPartition(topic_prefix + t.value, n)
                for t in notifier_boot.CONFIRMATION_TOPICS
                for n in partitions
            }
        )
    )


def _command(command_id: str, loan_id: str, now: datetime) -> c.ContactCommand:
    return c.ContactCommand(
        command_id=command_id,
        intent_id=f"I-{command_id}",
        case_id=f"K-{loan_id}",
        loan_id=loan_id,
        borrower_id="B-1",
        recipient="debtor",
        channel="sms",
        stage="warning",
        template="warning-reminder",
        currency="CNY",
        amount_due=Decimal("100.00"),
        confirmation_id=f"conf-{command_id}",
        ledger_watermark=1,
        confirmed_at=now - timedelta(minutes=1),
        confirmation_valid_until=now + timedelta(minutes=30),
        borrower_time_zone=zone_at_midday(),
        jurisdiction="CN",
        issued_at=now,
    )


async def _status(runtime: Runtime, command_id: str) -> str | None:
    async with runtime.engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM dispatches WHERE command_id = :c"), {"c": command_id}
        )
    return None if status is None else str(status)


async def test_nothing_is_sent_while_the_repayment_lane_is_behind_then_the_repaid_loan_is_cancelled(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> None:
    settings = NotifierSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "smtp_port": unused_port(),
        }
    )
    await migrate(notifier_boot.MIGRATIONS, database_url, settings.db_schema)
    runtime = notifier_boot.build_runtime(settings)
    contacts, repayments, confirmations = runtime.loops
    # The repayment lane is down (a restart, a rebalance).
    runtime.loops = [contacts, confirmations]
    app = notifier_boot.create_app(runtime, manage_runtime=False)
    now = datetime.now(UTC)
    async with (
        running(runtime),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://notifier",
            headers=dev_headers(["contacts:write"]),
        ) as http,
    ):
        put = await http.put(
            "/v1/borrowers/B-1/contact-details", json={"language": "en", "phone": "+8613812341234"}
        )
        assert put.status_code == 204, put.text
        p = await producer(stack["kafka_bootstrap"])
        try:
            lender = lending.Lender(p, topic_prefix)
            # L-1 is repaid in full; the lane that would learn it does not run.
            await lender.publish(
                lending.repayment("L-1", Decimal("100.00"), Decimal("0"), repayment_id="R-1")
            )
            await lender.publish(_command("C-1", "L-1", now))
            await lender.publish(_command("C-2", "L-2", now))  # not repaid
        finally:
            await p.stop()
        await eventually(lambda: _status(runtime, "C-1"))
        await eventually(lambda: _status(runtime, "C-2"))
        # Due now, and the dispatcher passes run: held, they stay pending and unsent.
        await asyncio.sleep(settings.repayment_gate_max_lag_ms / 1000 + 2)
        assert (await _status(runtime, "C-1"), await _status(runtime, "C-2")) == (
            "pending",
            "pending",
        )
        assert await _count(runtime, "SELECT count(*) FROM recorded_sends") == 0
        gate = runtime.state["repayment_gate"]
        assert "1 records behind" in (gate.held() or "")
        assert REGISTRY.get_sample_value("notifier_dispatch_held") == 1
        ready = await http.get("/readyz")
        assert "dispatch held" in ready.text

        stop = asyncio.Event()
        lane = asyncio.create_task(repayments.run(stop))  # the lane catches up
        try:
            assert await eventually(lambda: _sent_or_cancelled(runtime), within=30) == {
                "C-1": "cancelled",
                "C-2": "sent",
            }
        finally:
            stop.set()
            await lane
        async with runtime.engine.connect() as conn:
            sent = (await conn.execute(text("SELECT command_id FROM recorded_sends"))).scalars()
            assert list(sent) == ["C-2"]


async def _sent_or_cancelled(runtime: Runtime) -> dict[str, str] | None:
    statuses = {c: await _status(runtime, c) for c in ("C-1", "C-2")}
    done = all(s in ("sent", "cancelled") for s in statuses.values())
    return {c: str(s) for c, s in statuses.items()} if done else None
