"""A real notifier process killed between handing a contact to its channel and recording
that it did (the ``after_channel_handover`` fault hook), then restarted: the person gets the
message once. An e-mail (the SMTP relay cannot be asked) is recorded in doubt and is not
sent again when its lease runs out; a text is looked up at the provider by its idempotency
key and recorded as sent, without a second request."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import select

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.db import make_engine
from notifier.adapters.tables import contact_attempts, dispatches
from scripts import lending
from scripts.services import ServiceProcess
from tests.provider_double import ProviderDouble
from tests.smtp_sink import SmtpSink
from tests.support import eventually, unused_port, zone_at_midday

LEASE_S = 4.0


def _notifier(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    smtp_port: int,
    log: Path,
    **extra: str,
) -> ServiceProcess:
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_DATABASE_URL": database_url,
            "NOTIFIER_TOPIC_PREFIX": topic_prefix,
            "NOTIFIER_KAFKA_BOOTSTRAP": stack["kafka_bootstrap"],
            "NOTIFIER_HTTP_PORT": str(port),
            "NOTIFIER_ENVIRONMENT": "test",
            "NOTIFIER_SMTP_PORT": str(smtp_port),
            "NOTIFIER_SENDING_LEASE_S": str(LEASE_S),
            "NOTIFIER_SMTP_TIMEOUT_S": "1",
            "NOTIFIER_PROVIDER_TIMEOUT_S": "0.5",
            "NOTIFIER_PROVIDER_MAX_TRIES": "1",
            "NOTIFIER_SEND_RETRY_BACKOFF_S": "1",
            "COLLECTIONS_FAULT_CRASH_AT": "after_channel_handover",
            "COLLECTIONS_FAULT_CRASH_AFTER": "1",
            **extra,
        }
    )
    return ServiceProcess("notifier", port, env, log)


def _command(command_id: str, channel: str) -> c.ContactCommand:
    now = datetime.now(UTC)
    return c.ContactCommand(
        command_id=command_id,
        intent_id=f"i-{command_id}",
        case_id="C-1",
        loan_id="L-1",
        borrower_id="B-1",
        recipient="debtor",
        channel=channel,
        stage="warning",
        template="warning-reminder",
        currency="CNY",
        amount_due=Decimal("1234.50"),
        confirmation_id="conf-1",
        ledger_watermark=1,
        confirmed_at=now,
        confirmation_valid_until=now + timedelta(minutes=30),
        borrower_time_zone=zone_at_midday(),
        jurisdiction="CN",
        issued_at=now,
    )


async def _crash_mid_send(
    notifier: ServiceProcess, lender: lending.Lender, command: c.ContactCommand
) -> None:
    """Start armed, store the borrower's details, send the command: the process dies
    right after the hand-over, before recording it. Then restart it disarmed."""
    await asyncio.to_thread(notifier.migrate)
    notifier.start()
    await asyncio.to_thread(notifier.wait_ready)
    async with httpx.AsyncClient(
        base_url=notifier.base_url, headers=dev_headers(["contacts:write"])
    ) as http:
        stored = await http.put(
            "/v1/borrowers/B-1/contact-details",
            json={"language": "en", "email": "bob@example.com", "phone": "+8613812341234"},
        )
        assert stored.status_code == 204, stored.text
    await lender.publish(command)
    assert notifier.process is not None
    code = await asyncio.to_thread(notifier.process.wait, 60)
    assert code == 137, "the fault hook should have killed the notifier after the hand-over"
    for key in ("COLLECTIONS_FAULT_CRASH_AT", "COLLECTIONS_FAULT_CRASH_AFTER"):
        notifier.env.pop(key)
    notifier.start()
    await asyncio.to_thread(notifier.wait_ready)


async def _row(database_url: str, command_id: str) -> tuple[str, str | None, str | None]:
    engine = make_engine(database_url, schema="notifier")
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(dispatches.c.status, dispatches.c.reason, contact_attempts.c.result)
                    .select_from(
                        dispatches.outerjoin(
                            contact_attempts,
                            contact_attempts.c.command_id == dispatches.c.command_id,
                        )
                    )
                    .where(dispatches.c.command_id == command_id)
                )
            ).one()
    finally:
        await engine.dispose()
    return row.status, row.reason, row.result


async def test_an_email_handed_over_before_a_crash_is_in_doubt_and_not_sent_again(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    lender: lending.Lender,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    notifier = _notifier(
        stack, database_url, topic_prefix, smtp_sink.port, tmp_path / "notifier.log"
    )
    try:
        await _crash_mid_send(notifier, lender, _command("CMD-MAIL", "email"))
        assert len(smtp_sink.message_ids) == 1  # it did reach the relay before the crash

        async def in_doubt() -> tuple[str, str | None, str | None] | None:
            row = await _row(database_url, "CMD-MAIL")
            return row if row[0] != "sending" else None

        status, reason, result = await eventually(in_doubt, within=LEASE_S * 5)
        # Several leases later it is still in doubt, and was not sent again.
        await asyncio.sleep(LEASE_S * 2)
        assert await _row(database_url, "CMD-MAIL") == (status, reason, result)
        async with httpx.AsyncClient(
            base_url=notifier.base_url, headers=dev_headers(["cases:read", "admin"])
        ) as http:
            page = (await http.get("/v1/contacts", params={"loan_id": "L-1"})).json()
            summary = (await http.get("/v1/contacts/summary")).json()
            metrics = (await http.get("/metrics")).text
    finally:
        notifier.stop()
    assert smtp_sink.message_ids == ["<CMD-MAIL@lender.example>"]
    # Counted against the caps as the worst case; visible in the timeline and the metrics.
    assert (status, reason, result) == ("in_doubt", "outcome_unknown_after_handover", "unknown")
    assert [(d["decision"], d["rule"]) for d in page["decisions"]] == [
        ("in_doubt", "channel.email.in_doubt")
    ]
    assert summary["dispatches"] == {"in_doubt": 1}
    assert (
        'notifier_contact_decisions_total{decision="in_doubt",'
        'reason="outcome_unknown_after_handover"} 1.0'
    ) in metrics


async def test_a_text_handed_over_before_a_crash_is_found_at_the_provider_by_its_key(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    lender: lending.Lender,
    smtp_sink: SmtpSink,
    provider_double: ProviderDouble,
    tmp_path: Path,
) -> None:
    notifier = _notifier(
        stack,
        database_url,
        topic_prefix,
        smtp_sink.port,
        tmp_path / "notifier.log",
        NOTIFIER_PROVIDER_BASE_URL=provider_double.base_url,
    )
    try:
        await _crash_mid_send(notifier, lender, _command("CMD-SMS", "sms"))
        assert provider_double.sent_keys() == ["CMD-SMS"]

        async def settled() -> tuple[str, str | None, str | None] | None:
            row = await _row(database_url, "CMD-SMS")
            return row if row[0] != "sending" else None

        row = await eventually(settled, within=LEASE_S * 5)
        await asyncio.sleep(LEASE_S)
    finally:
        notifier.stop()
    assert row == ("sent", "found_at_provider", "delivered")
    # One request with the key: the restarted notifier asked, it did not send again.
    assert [(key, replayed) for key, _, replayed in provider_double.requests] == [
        ("CMD-SMS", False)
    ]
    assert provider_double.doubled() == {}
