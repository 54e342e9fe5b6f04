"""Personal data never reaches a log line or Kafka: the three services run as processes
through a whole contact cycle (contact details registered, read back in full and masked,
e-mails and texts sent, invalid and unauthorised requests refused), then every line each
service logged and every record on every topic is searched for the borrowers' phone
numbers, e-mail addresses, postal addresses and guarantors' names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from collections_kit.auth import dev_headers
from collections_kit.topics import topic_specs
from scripts import lending
from scripts.infra import producer, read_to_end
from scripts.services import CLEAN_EXIT, Fleet
from tests.smtp_sink import SmtpSink
from tests.support import eventually, fleet_running

BORROWERS = [
    {
        "id": f"B-pii-{n}",
        "loan": f"L-pii-{n}",
        "email": f"pii.borrower{n}@example.org",
        "phone": f"+4477009004{n:02d}",
        "address": f"{n} Confidential Mews, Leeds",
        "guarantor": f"Guarantor Person{n}",
        "guarantor_phone": f"+4477009005{n:02d}",
        "guarantor_email": f"guarantor{n}@example.net",
    }
    for n in range(1, 6)
]


def secrets() -> list[str]:
    found = []
    for b in BORROWERS:
        found += [
            b["email"],
            b["phone"],
            b["phone"][1:],
            b["phone"][3:],
            b["address"],
            b["guarantor"],
            b["guarantor_phone"],
            b["guarantor_phone"][3:],
            b["guarantor_email"],
            b["email"].split("@")[0],
        ]
    return found


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
        base_port=18230,
        smtp_port=smtp_sink.port,
        # The most talkative the services get: nothing may slip out even there.
        extra_env={
            n: {f"{p}LOG_LEVEL": "DEBUG"}
            for n, p in (
                ("workflow", "WORKFLOW_"),
                ("ledger-sync", "LEDGER_SYNC_"),
                ("notifier", "NOTIFIER_"),
            )
        },
    ) as fleet:
        yield fleet


def zone_at_midday() -> str:
    offset = max(min(12 - datetime.now(UTC).hour, 12), -12)
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


async def raw_records(bootstrap: str, prefix: str) -> list[bytes]:
    """Every key, value and header value on every topic of the run, as raw bytes."""
    out: list[bytes] = []
    for r in await read_to_end(bootstrap, [spec.name for spec in topic_specs(prefix=prefix)]):
        out += [r.key or b"", r.value or b""]
        out += [v or b"" for _, v in r.headers]
    return out


async def test_no_phone_number_or_email_address_in_any_log_or_on_kafka(
    fleet: Fleet, smtp_sink: SmtpSink, stack: dict[str, str], topic_prefix: str
) -> None:
    notifier, workflow = fleet["notifier"].base_url, fleet["workflow"].base_url
    writer = dev_headers(["contacts:write"], subject="crm")
    reader = dev_headers(["cases:read"], subject="agent:reader")
    privileged = dev_headers(["cases:read", "pii:read"], subject="agent:privileged")
    async with httpx.AsyncClient(timeout=10) as http:
        for b in BORROWERS:
            put = await http.put(
                f"{notifier}/v1/borrowers/{b['id']}/contact-details",
                headers=writer,
                json={
                    "language": "en",
                    "email": b["email"],
                    "phone": b["phone"],
                    "postal_address": b["address"],
                    "guarantor": {
                        "name": b["guarantor"],
                        "phone": b["guarantor_phone"],
                        "email": b["guarantor_email"],
                    },
                },
            )
            assert put.status_code == 204, put.text
            # Refused requests carrying personal data: no echo, no log.
            bad = await http.put(
                f"{notifier}/v1/borrowers/{b['id']}/contact-details",
                headers=writer,
                json={"language": "en", "phone": b["phone"] + "x", "email": b["email"] + " "},
            )
            assert bad.status_code == 422
            assert b["phone"] not in bad.text
            unauthorised = await http.put(
                f"{notifier}/v1/borrowers/{b['id']}/contact-details",
                headers=reader,
                json={"language": "en", "email": b["email"]},
            )
            assert unauthorised.status_code == 403
            assert b["email"] not in unauthorised.text
            masked = await http.get(
                f"{notifier}/v1/borrowers/{b['id']}/contact-details", headers=reader
            )
            assert b["email"] not in masked.text
            assert b["phone"] not in masked.text
            clear = await http.get(
                f"{notifier}/v1/borrowers/{b['id']}/contact-details", headers=privileged
            )
            assert clear.json()["email"] == b["email"]

        kafka = await producer(stack["kafka_bootstrap"])
        lender = lending.Lender(kafka, topic_prefix)
        try:
            for b in BORROWERS:
                await lender.publish(
                    lending.disbursement(b["loan"], Decimal("900.00"), currency="GBP")
                )
                await lender.publish(
                    lending.overdue(
                        b["loan"],
                        Decimal("900.00"),
                        currency="GBP",
                        tz=zone_at_midday(),
                        jurisdiction="UK",
                        borrower_id=b["id"],
                    )
                )
        finally:
            await kafka.stop()
        # Every borrower was e-mailed: the personal data was really used along the way.
        await eventually(
            lambda: {b["email"] for b in BORROWERS} <= set(smtp_sink.recipients), within=90
        )

        async def all_contacted() -> bool:
            for b in BORROWERS:
                r = await http.get(f"{workflow}/v1/cases/{b['loan']}/timeline", headers=reader)
                if "contact_sent" not in [e["kind"] for e in r.json().get("entries", [])]:
                    return False
            return True

        await eventually(all_contacted, within=60)

    codes = await asyncio.to_thread(fleet.stop)
    assert all(code in CLEAN_EXIT for code in codes.values()), codes

    logs = {p.name: p.read_text(errors="replace") for p in fleet.log_dir.glob("*.log")}
    assert set(logs) == {"workflow.log", "ledger-sync.log", "notifier.log"}
    assert [name for name, text in logs.items() if not text.strip()] == []
    assert any("send recorded" in text or "sent" in text for text in logs.values())
    leaks = [(name, s) for name, text in logs.items() for s in secrets() if s in text]
    assert leaks == [], leaks

    records = b"\n".join(await raw_records(stack["kafka_bootstrap"], topic_prefix))
    assert len(records) > 1000
    on_kafka = [s for s in secrets() if s.encode() in records]
    assert on_kafka == [], on_kafka
