"""Delivery receipts over HTTP against a real PostgreSQL: signed per provider, applied to
their attempt and announced once; duplicates, late and unmatched receipts are answered,
kept and counted, never an error."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import FixedClock
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx, flush
from collections_kit.runtime import Runtime
from notifier.adapters.tables import contact_attempts, delivery_receipts, dispatches, outbox
from notifier.app.dispatcher import Dispatcher
from notifier.app.handlers import NotifierHandlers
from notifier.domain.policy import DispatchPolicy
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from tests.support import migrate, unused_port

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SECRET = "s3cret-of-acme"


class Notifier:
    def __init__(self, runtime: Runtime, clock: FixedClock, http: httpx.AsyncClient) -> None:
        self.runtime, self.clock, self.http = runtime, clock, http

    @property
    def dispatcher(self) -> Dispatcher:
        dispatcher: Dispatcher = self.runtime.state["dispatcher"]
        return dispatcher

    async def command(self, command_id: str, channel: str) -> None:
        data = c.ContactCommand(
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
            amount_due="1234.50",
            confirmation_id="conf-1",
            ledger_watermark=1,
            confirmed_at=NOW - timedelta(minutes=1),
            confirmation_valid_until=NOW + timedelta(minutes=30),
            borrower_time_zone="Asia/Shanghai",
            jurisdiction="CN",
            issued_at=NOW - timedelta(minutes=1),
        )
        routes = NotifierHandlers(DispatchPolicy()).routes()
        async with self.runtime.engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=NOW,
                source="test",
                topic_prefix="",
                outbox=outbox,
                schema="notifier",
            )
            await routes[c.ContactCommand](
                tx,
                Envelope(
                    id=f"e-{command_id}",
                    type="test",
                    source="test",
                    time=NOW,
                    subject="L-1",
                    data=data,
                ),
            )
            await flush(tx)

    async def attempt(self, command_id: str) -> tuple[str, str, str | None]:
        async with self.runtime.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        dispatches.c.status,
                        contact_attempts.c.result,
                        contact_attempts.c.provider_ref,
                    )
                    .select_from(
                        dispatches.join(
                            contact_attempts,
                            contact_attempts.c.command_id == dispatches.c.command_id,
                        )
                    )
                    .where(dispatches.c.command_id == command_id)
                )
            ).one()
        return row.status, row.result, row.provider_ref

    async def outcomes(self) -> list[tuple[str, str, str]]:
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(
                select(func.unnest(outbox.c.payloads).label("value")).order_by(outbox.c.id)
            )
            found = [c.ContactOutcome.model_validate(json.loads(r.value)) for r in rows]
        return [(o.command_id, o.outcome, o.reason) for o in found]

    async def post(
        self,
        body: dict[str, Any] | bytes,
        *,
        provider: str = "acme",
        secret: str = SECRET,
        signature: str | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        sign = signature or "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        return await self.http.post(
            f"/v1/delivery-receipts/{provider}",
            content=raw,
            headers={"X-Signature": sign, "Content-Type": "application/json"},
        )


@pytest.fixture
async def notifier(database_url: str) -> AsyncIterator[Notifier]:
    settings = NotifierSettings(
        database_url=database_url,
        smtp_port=unused_port(),
        delivery_receipt_secrets=f"acme:{SECRET},other:x",
    )
    await migrate(bootstrap.MIGRATIONS, database_url, settings.db_schema)
    clock = FixedClock(NOW)
    runtime = bootstrap.build_runtime(settings, clock=clock)
    app = bootstrap.create_app(runtime, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://notifier"
    ) as http:
        n = Notifier(runtime, clock, http)
        stored = await http.put(
            "/v1/borrowers/B-1/contact-details",
            json={"language": "en", "email": "bob@example.com", "phone": "+8613812341234"},
            headers=dev_headers(["contacts:write"]),
        )
        assert stored.status_code == 204, stored.text
        yield n
    await runtime.engine.dispose()


def receipt(
    receipt_id: str, reference: str | None, status: str = "delivered", **extra: Any
) -> dict[str, Any]:
    return {
        "receipt_id": receipt_id,
        "reference": reference,
        "status": status,
        "occurred_at": (NOW + timedelta(minutes=2)).isoformat(),
        **extra,
    }


def counted(effect: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "notifier_delivery_receipts_total", {"provider": "acme", "effect": effect}
        )
        or 0.0
    )


async def test_a_receipt_updates_its_attempt_once_and_odd_ones_are_counted_not_errors(
    notifier: Notifier,
) -> None:
    await notifier.command("CMD-1", "sms")
    assert await notifier.dispatcher.dispatch_once() == 1
    assert await notifier.attempt("CMD-1") == ("sent", "sent", None)
    before = {e: counted(e) for e in ("applied", "duplicate", "late", "unmatched")}

    first = await notifier.post(receipt("R-1", "CMD-1", message_id="msg-9"))
    assert first.status_code == 200
    assert first.json() == {"effect": "applied"}
    assert await notifier.attempt("CMD-1") == ("sent", "delivered", "msg-9")
    # The same receipt again: nothing twice.
    again = await notifier.post(receipt("R-1", "CMD-1", message_id="msg-9"))
    assert again.json() == {"effect": "duplicate"}
    # A later receipt about an attempt that has its result: kept, no effect.
    late = await notifier.post(receipt("R-2", None, "failed", message_id="msg-9"))
    assert late.json() == {"effect": "late"}
    assert await notifier.attempt("CMD-1") == ("sent", "delivered", "msg-9")
    # About nothing of ours.
    stray = await notifier.post(receipt("R-3", "NOT-OURS"))
    assert stray.status_code == 200
    assert stray.json() == {"effect": "unmatched"}

    assert [o for o in await notifier.outcomes() if o[0] == "CMD-1"] == [
        ("CMD-1", "sent", "all_checks_passed"),
        ("CMD-1", "delivered", "provider_delivered"),
    ]
    assert {e: counted(e) - before[e] for e in before} == {
        "applied": 1,
        "duplicate": 1,
        "late": 1,
        "unmatched": 1,
    }
    async with notifier.runtime.engine.connect() as conn:
        kept = (
            await conn.execute(
                select(delivery_receipts.c.receipt_id, delivery_receipts.c.effect).order_by(
                    delivery_receipts.c.receipt_id
                )
            )
        ).all()
    assert [tuple(r) for r in kept] == [("R-1", "applied"), ("R-2", "late"), ("R-3", "unmatched")]


async def test_a_receipt_settles_an_attempt_a_crash_left_unrecorded(notifier: Notifier) -> None:
    await notifier.command("CMD-2", "voice")
    await notifier.dispatcher._decide_due()  # handed over, then the dispatcher died
    assert (await notifier.attempt("CMD-2"))[:2] == ("sending", "pending")
    taken = await notifier.post(receipt("R-9", "CMD-2", "answered", message_id="call-1"))
    assert taken.json() == {"effect": "applied"}
    assert await notifier.attempt("CMD-2") == ("sent", "answered", "call-1")
    assert [o for o in await notifier.outcomes() if o[0] == "CMD-2"] == [
        ("CMD-2", "sent", "delivery_receipt"),
        ("CMD-2", "answered", "provider_answered"),
    ]
    # Its lease runs out: nothing is left to resolve, nothing is sent.
    notifier.clock.set(NOW + timedelta(minutes=5))
    assert await notifier.dispatcher.dispatch_once() == 0


@pytest.mark.parametrize(
    ("provider", "secret", "signature"),
    [
        ("acme", SECRET, "sha256=" + "0" * 64),  # wrong signature
        ("acme", "another secret", None),  # signed with another secret
        ("nobody", SECRET, None),  # a provider without a secret
        ("other", SECRET, None),  # another provider's secret
    ],
)
async def test_a_receipt_not_signed_by_its_provider_is_refused(
    notifier: Notifier, provider: str, secret: str, signature: str | None
) -> None:
    response = await notifier.post(
        receipt("R-1", "CMD-1"), provider=provider, secret=secret, signature=signature
    )
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    unsigned = await notifier.http.post("/v1/delivery-receipts/acme", json=receipt("R-1", "CMD-1"))
    assert unsigned.status_code == 401
    async with notifier.runtime.engine.connect() as conn:
        assert (await conn.execute(select(delivery_receipts))).all() == []


@pytest.mark.parametrize(
    "body",
    [
        receipt("R-1", "CMD-1", "read"),
        {"receipt_id": "R-1", "status": "delivered"},
        receipt("R-1", "CMD-1", unexpected=1),
        receipt("R\x00-1", "CMD-1"),
    ],
)
async def test_a_signed_body_that_is_not_a_receipt_is_a_422_problem(
    notifier: Notifier, body: dict[str, Any]
) -> None:
    response = await notifier.post(body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
