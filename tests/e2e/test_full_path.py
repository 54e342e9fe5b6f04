"""The whole path across three real processes, a real broker, PostgreSQL and SMTP.

overdue event → case (warning) → contact intent → balance check → ledger confirmation →
contact command → notifier → e-mail over SMTP → outcome → case timeline; then a full
repayment closes the case and nothing is sent for it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.envelope import Envelope
from collections_kit.topics import Topic
from scripts import lending
from scripts.infra import producer
from scripts.services import Fleet
from tests.smtp_sink import SmtpSink
from tests.support import eventually, fleet_running, read_topic, zone_at_midday


@pytest.fixture
async def fleet(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> AsyncIterator[Fleet]:
    async with fleet_running(
        stack,
        database_url,
        topic_prefix,
        tmp_path,
        base_port=18210,
        smtp_port=smtp_sink.port,
    ) as fleet:
        yield fleet


async def commands_for(stack: dict[str, str], prefix: str, loan_id: str) -> list[c.ContactCommand]:
    found = await read_topic(stack["kafka_bootstrap"], prefix + Topic.CONTACT_COMMANDS.value)
    return [
        e.data
        for e in found
        if isinstance(e, Envelope)
        and isinstance(e.data, c.ContactCommand)
        and e.data.loan_id == loan_id
    ]


async def test_overdue_loan_is_contacted_after_confirmation_and_never_after_repayment(
    fleet: Fleet, smtp_sink: SmtpSink, stack: dict[str, str], topic_prefix: str
) -> None:
    loan, borrower, email = "L-e2e-1", "B-e2e-1", "borrower.e2e@example.com"
    async with httpx.AsyncClient(timeout=10, headers=dev_headers(subject="e2e-test")) as http:
        put = await http.put(
            f"{fleet['notifier'].base_url}/v1/borrowers/{borrower}/contact-details",
            json={
                "language": "en",
                "email": email,
                "phone": "+447700900123",
                "postal_address": "1 Test Street, London",
            },
        )
        assert put.status_code == 204, put.text

        kafka = await producer(stack["kafka_bootstrap"])
        lender = lending.Lender(kafka, topic_prefix)
        try:
            now = datetime.now(UTC)
            await lender.publish(lending.disbursement(loan, Decimal("800.00"), currency="GBP"))
            await lender.publish(
                lending.overdue(
                    loan,
                    Decimal("800.00"),
                    currency="GBP",
                    tz=zone_at_midday(),
                    jurisdiction="UK",
                    as_of=now,
                    borrower_id=borrower,
                )
            )

            await eventually(
                lambda: any(email in rcpts for rcpts, _ in smtp_sink.messages), within=60
            )
            wf = fleet["workflow"].base_url

            async def timeline_kinds() -> list[str]:
                body = (await http.get(f"{wf}/v1/cases/{loan}/timeline")).json()
                return [e["kind"] for e in body["entries"]]

            kinds = await eventually(lambda: _has(timeline_kinds(), "contact_sent"), within=30)
            for step in (
                "case_opened",
                "contact_intent_recorded",
                "contact_commanded",
                "contact_sent",
            ):
                assert step in kinds, kinds
            case = (await http.get(f"{wf}/v1/cases/{loan}")).json()
            assert case["stage"] == "warning"
            assert case["status"] == "open"
            # The e-mail body names the debt, never leaks another party, carries an opt-out.
            body = next(content for rcpts, content in smtp_sink.messages if email in rcpts)
            assert b"800" in body

            await lender.publish(
                lending.repayment(loan, Decimal("800.00"), Decimal("0"), currency="GBP")
            )
            await eventually(lambda: _case_status(http, wf, loan, "closed"), within=30)
            before = len(await commands_for(stack, topic_prefix, loan))
            sent_before = len(smtp_sink.messages)
            # The lending system's feed is late: it still reports the loan overdue, a month on.
            await lender.publish(
                lending.overdue(
                    loan,
                    Decimal("800.00"),
                    dpd=31,
                    currency="GBP",
                    tz=zone_at_midday(),
                    jurisdiction="UK",
                    as_of=now + timedelta(days=1),
                    borrower_id=borrower,
                )
            )
            await eventually(
                lambda: _has(timeline_kinds(), "overdue_after_close_ignored"), within=30
            )
            await asyncio.sleep(2.0)
            assert len(await commands_for(stack, topic_prefix, loan)) == before
            assert len(smtp_sink.messages) == sent_before
        finally:
            await kafka.stop()


async def _has(kinds: Any, kind: str) -> list[str] | None:
    found: list[str] = await kinds
    return found if kind in found else None


async def _case_status(http: httpx.AsyncClient, base: str, loan: str, status: str) -> bool:
    return bool((await http.get(f"{base}/v1/cases/{loan}")).json().get("status") == status)
