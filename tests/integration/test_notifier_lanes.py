"""The notifier's two consumer loops against the real broker: one group, each member on its
own topics. Members of a group may subscribe to different topics; this shows the broker
and aiokafka's assignor give each loop every partition of its topics (and none of the
other's), and that both consume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from aiokafka.structs import TopicPartition
from sqlalchemy import text

from collections_kit import contract as c
from collections_kit.runtime import Runtime
from notifier.entrypoints import bootstrap as notifier_boot
from notifier.settings import NotifierSettings
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, running, unused_port


@pytest.fixture
async def notifier(stack: dict[str, str], database_url: str,
                   topic_prefix: str) -> AsyncIterator[Runtime]:
    settings = NotifierSettings.model_validate({
        "database_url": database_url, "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix, "environment": "test", "smtp_port": unused_port()})
    await migrate(notifier_boot.MIGRATIONS, database_url, settings.db_schema)
    async with running(notifier_boot.build_runtime(settings)) as runtime:
        yield runtime


async def _count(runtime: Runtime, sql: str) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)


async def test_each_loop_gets_all_partitions_of_its_topics_and_consumes_them(
        notifier: Runtime, stack: dict[str, str], topic_prefix: str) -> None:
    contacts, repayments = notifier.loops
    now = datetime.now(UTC)
    p = await producer(stack["kafka_bootstrap"])
    try:
        lender = lending.Lender(p, topic_prefix)
        await lender.publish(lending.repayment("L-1", Decimal("10.00"), Decimal("990.00"),
                                               repayment_id="R-1"))
        await lender.publish(c.ContactCommand(
            command_id="C-1", intent_id="I-1", case_id="K-1", loan_id="L-2",
            borrower_id="B-2", recipient="debtor", channel="email", stage="warning",
            template="warning-reminder", currency="CNY", amount_due=Decimal("100.00"),
            confirmation_id="conf-1", ledger_watermark=1, confirmed_at=now,
            confirmation_valid_until=now + timedelta(minutes=30),
            borrower_time_zone="Asia/Shanghai", jurisdiction="CN", issued_at=now))
    finally:
        await p.stop()
    await eventually(lambda: _count(
        notifier, "SELECT count(*) FROM repayments WHERE repayment_id = 'R-1'"))
    await eventually(lambda: _count(
        notifier, "SELECT count(*) FROM dispatches WHERE command_id = 'C-1'"))

    partitions = range(3)  # the topic_prefix fixture's topics
    assert repayments.assigned == {TopicPartition(topic_prefix + t.value, n)
                                   for t in notifier_boot.REPAYMENT_TOPICS for n in partitions}
    assert contacts.assigned == {TopicPartition(topic_prefix + t.value, n)
                                 for t in notifier_boot.CONTACT_TOPICS for n in partitions}
