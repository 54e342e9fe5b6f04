"""A collector's contact permit across three real processes, the broker and PostgreSQL.

overdue event → case → ledger confirmation → contact command (the permit's anchor) →
formal notice → a call task, leased by a collector → the collector's permit granted; then
the borrower repays in full while the task is leased: the task is withdrawn and the
collector's next permit is refused with reason ``repaid``. The repayment reached the
person who would call.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from collections_kit.auth import dev_headers
from scripts import lending
from scripts.services import Fleet
from tests.smtp_sink import SmtpSink
from tests.support import eventually, fleet_running, zone_at_midday

COLLECTOR = dev_headers(["contacts:permit", "collections:work"], subject="col-e2e")
SUPERVISOR = dev_headers(["cases:read", "cases:write"], subject="supervisor-e2e")


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
        base_port=18290,
        smtp_port=smtp_sink.port,
    ) as fleet:
        yield fleet


async def test_a_repayment_while_a_task_is_leased_refuses_the_collectors_next_permit(
    fleet: Fleet, smtp_sink: SmtpSink, lender: lending.Lender
) -> None:
    loan, borrower, email = "L-permit-1", "B-permit-1", "permit.e2e@example.com"
    notifier = fleet["notifier"].base_url
    async with httpx.AsyncClient(timeout=10, headers=dev_headers(subject="e2e-test")) as http:
        put = await http.put(
            f"{notifier}/v1/borrowers/{borrower}/contact-details",
            json={"language": "en", "email": email, "phone": "+447700900123"},
        )
        assert put.status_code == 204, put.text
    await lender.publish(lending.disbursement(loan, Decimal("800.00"), currency="GBP"))
    await lender.publish(
        lending.overdue(
            loan,
            Decimal("800.00"),
            currency="GBP",
            tz=zone_at_midday(),
            jurisdiction="UK",
            as_of=datetime.now(UTC),
            borrower_id=borrower,
        )
    )
    # The workflow's first contact (after a ledger confirmation) is the permit's anchor.
    await eventually(lambda: any(email in rcpts for rcpts, _ in smtp_sink.messages), within=60)

    workflow = fleet["workflow"].base_url
    async with httpx.AsyncClient(timeout=10, headers=SUPERVISOR) as http:
        escalated = await http.post(
            f"{workflow}/v1/cases/{loan}/escalations",
            json={"kind": "manual", "reason": "formal notice due"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert escalated.status_code == 200, escalated.text

    ask = {"loan_id": loan, "person": "debtor", "channel": "voice"}
    async with httpx.AsyncClient(timeout=10, headers=COLLECTOR) as http:

        async def leased() -> dict[str, Any] | None:
            answer = await http.post(f"{workflow}/v1/queues/calls/next")
            return answer.json() if answer.status_code == 200 else None

        task = await eventually(leased, within=30)
        assert (task["loan_id"], task["collector"]) == (loan, "col-e2e")

        async def answered(reason: str) -> dict[str, Any] | None:
            answer = await http.post(f"{notifier}/v1/contact-permits", json=ask)
            body: dict[str, Any] = answer.json()
            return body if body.get("reason") == reason else None

        granted = await eventually(lambda: answered("all_checks_passed"), within=30)
        assert granted["actor"] == {"kind": "collector", "id": "col-e2e", "source": "token"}
        done = await http.post(
            f"{notifier}/v1/contact-permits/{granted['permit_id']}/result",
            json={"result": "unanswered"},
        )
        assert done.status_code == 200, done.text

        await lender.publish(
            lending.repayment(loan, Decimal("800.00"), Decimal("0"), currency="GBP")
        )
        # Asked until the news is in (grants meanwhile count, as they would for real).
        refused = await eventually(lambda: answered("repaid"), within=30)
    assert refused["decision"] == "refused"
    assert refused["rule"] in ("repayment_recheck", "workflow_cancellation")

    async with httpx.AsyncClient(timeout=10, headers=SUPERVISOR) as http:

        async def withdrawn() -> list[dict[str, Any]]:
            body = (await http.get(f"{workflow}/v1/cases/{loan}/timeline")).json()
            return [e for e in body["entries"] if e["kind"] == "task_withdrawn"]

        (entry,) = await eventually(withdrawn, within=30)
    assert entry["detail"]["task_id"] == task["task_id"]
    assert entry["detail"]["reason"] == "repaid"


# Ledger confirmations valid for seconds, not half an hour: the case's last command lapses
# while the test waits, as it would in hours on a case nobody contacted since.
VALIDITY_S = 12


@pytest.fixture
async def short_lived(
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
        base_port=18440,
        smtp_port=smtp_sink.port,
        extra_env={"ledger-sync": {"LEDGER_SYNC_CONFIRMATION_VALIDITY_S": str(VALIDITY_S)}},
    ) as fleet:
        yield fleet


async def test_leasing_a_task_renews_the_lapsed_confirmation_the_collectors_permits_rest_on(
    short_lived: Fleet, smtp_sink: SmtpSink, lender: lending.Lender
) -> None:
    """The case's last contact command is older than its ledger confirmation's validity: a
    collector leases its task, the workflow asks ledger-sync for a fresh confirmation, and
    within seconds the collector's permit is granted on it. A repayment after that
    confirmation refuses the next permit with reason repaid."""
    fleet = short_lived
    loan, borrower, email = "L-permit-2", "B-permit-2", "permit2.e2e@example.com"
    notifier, workflow = fleet["notifier"].base_url, fleet["workflow"].base_url
    async with httpx.AsyncClient(timeout=10, headers=dev_headers(subject="e2e-test")) as http:
        put = await http.put(
            f"{notifier}/v1/borrowers/{borrower}/contact-details",
            json={"language": "en", "email": email, "phone": "+447700900124"},
        )
        assert put.status_code == 204, put.text
    await lender.publish(lending.disbursement(loan, Decimal("800.00"), currency="GBP"))
    await lender.publish(
        lending.overdue(
            loan,
            Decimal("800.00"),
            currency="GBP",
            tz=zone_at_midday(),
            jurisdiction="UK",
            as_of=datetime.now(UTC),
            borrower_id=borrower,
        )
    )
    await eventually(lambda: any(email in rcpts for rcpts, _ in smtp_sink.messages), within=60)
    async with httpx.AsyncClient(timeout=10, headers=SUPERVISOR) as http:
        escalated = await http.post(
            f"{workflow}/v1/cases/{loan}/escalations",
            json={"kind": "manual", "reason": "formal notice due"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert escalated.status_code == 200, escalated.text

        async def formal_notice_sent() -> bool:
            body = (await http.get(f"{workflow}/v1/cases/{loan}/timeline")).json()
            sent = [e for e in body["entries"] if e["kind"] == "contact_commanded"]
            return len(sent) >= 3  # the reminder, then the notice's letter and email

        await eventually(formal_notice_sent, within=60)
    # Every command's confirmation has lapsed now, and nobody has asked for another.
    await asyncio.sleep(VALIDITY_S + 2)

    voice = {"loan_id": loan, "person": "debtor", "channel": "voice"}
    async with httpx.AsyncClient(timeout=10, headers=COLLECTOR) as http:

        async def leased() -> dict[str, Any] | None:
            answer = await http.post(f"{workflow}/v1/queues/calls/next")
            return answer.json() if answer.status_code == 200 else None

        task = await eventually(leased, within=30)
        assert task["loan_id"] == loan
        leased_at = time.monotonic()

        async def answered(
            ask: dict[str, Any], reason: str, meanwhile: str
        ) -> dict[str, Any] | None:
            body: dict[str, Any] = (
                await http.post(f"{notifier}/v1/contact-permits", json=ask)
            ).json()
            assert body.get("reason") in (reason, meanwhile), body
            return body if body["reason"] == reason else None

        granted = await eventually(
            lambda: answered(voice, "all_checks_passed", "balance_unconfirmed"), within=10
        )
        assert time.monotonic() - leased_at < 10
        assert granted["decision"] == "granted"
        done = await http.post(
            f"{notifier}/v1/contact-permits/{granted['permit_id']}/result",
            json={"result": "unanswered"},
        )
        assert done.status_code == 200, done.text

        # The lease's confirmation lapses too, and nobody asks for another: the refusal
        # does, and says when to ask again. By email from here on (grants count, but no
        # cap counts emails in the UK).
        await asyncio.sleep(VALIDITY_S + 1)
        email_ask = {**voice, "channel": "email"}
        asked = (await http.post(f"{notifier}/v1/contact-permits", json=email_ask)).json()
        assert (asked["reason"], asked["detail"]) == ("balance_unconfirmed", "confirmation_asked")
        assert asked["retry_after"] is not None
        again = await eventually(
            lambda: answered(email_ask, "all_checks_passed", "balance_unconfirmed"), within=10
        )
        assert again["decision"] == "granted"

        await lender.publish(
            lending.repayment(loan, Decimal("100.00"), Decimal("700.00"), currency="GBP")
        )
        refused = await eventually(
            lambda: answered(email_ask, "repaid", "all_checks_passed"), within=30
        )
    assert (refused["decision"], refused["rule"]) == ("refused", "repayment_recheck")

    # Every step is on the case's timeline: the checks asked for, the confirmations, and
    # each permit granted or refused (reason, actor kind and id) and its reported result.
    async with httpx.AsyncClient(timeout=10, headers=SUPERVISOR) as http:

        async def steps() -> list[dict[str, Any]] | None:
            body = (await http.get(f"{workflow}/v1/cases/{loan}/timeline")).json()
            entries: list[dict[str, Any]] = body["entries"]
            refusals = [e for e in entries if e["kind"] == "permit_refused"]
            noted = any(e["detail"]["permit_id"] == refused["permit_id"] for e in refusals)
            return entries if noted else None

        entries = await eventually(steps, within=30)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("balance_check_requested") >= 2  # the lease's, the refusal's
    assert kinds.count("balance_reconfirmed") >= 2
    by_permit = {
        (e["kind"], e["detail"]["permit_id"]): e["detail"]
        for e in entries
        if e["kind"].startswith("permit_")
    }
    first = by_permit["permit_granted", granted["permit_id"]]
    assert (first["actor_kind"], first["actor_id"], first["channel"]) == (
        "collector",
        "col-e2e",
        "voice",
    )
    assert by_permit["permit_result", granted["permit_id"]]["result"] == "unanswered"
    assert by_permit["permit_refused", asked["permit_id"]]["reason"] == "balance_unconfirmed"
    assert by_permit["permit_refused", refused["permit_id"]]["reason"] == "repaid"
    # Ids and codes only: no contact detail of the borrower's reaches the timeline.
    assert not any(
        secret in json.dumps(entries) for secret in (email, "+447700900124", "7700900124")
    )
