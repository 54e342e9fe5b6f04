"""Personal data in the notifier: sealed at rest, masked without pii:read, and every
endpoint behind the right scope."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from collections_kit.auth import dev_headers
from collections_kit.migrate import upgrade
from collections_kit.pii import PiiError
from collections_kit.runtime import Runtime
from notifier.adapters.repository import ContactDetailsRepository
from notifier.adapters.tables import contact_details
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from tests.support import migrate

DETAILS = {
    "language": "en",
    "email": "grace.hopper@example.com",
    "phone": "+447700900461",
    "postal_address": "7 Secret Lane, Arlington",
    "guarantor": {
        "name": "Margaret Hamilton",
        "email": "margaret@example.com",
        "phone": "+447700900462",
        "postal_address": "9 Apollo Road",
    },
}
CLEAR_VALUES = [
    "grace.hopper@example.com",
    "+447700900461",
    "7700900461",
    "Secret Lane",
    "Margaret Hamilton",
    "margaret@example.com",
    "+447700900462",
    "Apollo Road",
]


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    settings = NotifierSettings(database_url=database_url)
    await migrate(bootstrap.MIGRATIONS, database_url, settings.db_schema)
    runtime = bootstrap.build_runtime(settings)
    yield runtime
    await runtime.producer.stop()
    await runtime.engine.dispose()


def client(runtime: Runtime, scopes: list[str] | None) -> httpx.AsyncClient:
    app = bootstrap.create_app(runtime, manage_runtime=False)
    headers = dev_headers(scopes, subject="crm") if scopes is not None else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://notifier", headers=headers
    )


async def test_contact_details_are_sealed_at_rest_and_masked_without_pii_read(
    runtime: Runtime,
) -> None:
    async with client(runtime, ["contacts:write"]) as writer:
        put = await writer.put("/v1/borrowers/B-PII/contact-details", json=DETAILS)
        assert put.status_code == 204, put.text

    # The raw columns hold none of it.
    async with runtime.engine.connect() as conn:
        raw = (
            (
                await conn.execute(
                    text("SELECT * FROM notifier.contact_details WHERE borrower_id = 'B-PII'")
                )
            )
            .mappings()
            .one()
        )
    dump = " ".join(str(v) for v in raw.values())
    for value in CLEAR_VALUES:
        assert value not in dump
    sealed = ("email", "phone", "postal_address", "guarantor_name")
    assert {c: raw[c][: len("pii1:dev1:")] for c in sealed} == dict.fromkeys(sealed, "pii1:dev1:")

    async with client(runtime, ["cases:read"]) as reader:
        masked = (await reader.get("/v1/borrowers/B-PII/contact-details")).json()
    assert masked["masked"] is True
    assert masked["email"] == "g***@example.com"
    assert masked["phone"] == "+44******0461"
    assert masked["postal_address"] == "7 S***"
    assert masked["guarantor"]["name"] == "M***"
    assert masked["guarantor"]["phone"] == "+44******0462"
    shown = str(masked)
    for value in CLEAR_VALUES:
        assert value not in shown

    async with client(runtime, ["cases:read", "pii:read"]) as privileged:
        clear = (await privileged.get("/v1/borrowers/B-PII/contact-details")).json()
    assert clear["masked"] is False
    assert (clear["email"], clear["phone"]) == ("grace.hopper@example.com", "+447700900461")
    assert clear["guarantor"]["name"] == "Margaret Hamilton"


async def test_a_sealed_value_moved_to_another_borrower_does_not_open(runtime: Runtime) -> None:
    async with client(runtime, ["contacts:write"]) as writer:
        for borrower in ("B-A", "B-B"):
            body = {**DETAILS, "phone": "+447700900111" if borrower == "B-A" else "+447700900222"}
            assert (
                await writer.put(f"/v1/borrowers/{borrower}/contact-details", json=body)
            ).status_code == 204
    ring = runtime.state["pii"]
    async with runtime.engine.begin() as conn:
        a_phone = await conn.scalar(
            select(contact_details.c.phone).where(contact_details.c.borrower_id == "B-A")
        )
        await conn.execute(
            update(contact_details)
            .where(contact_details.c.borrower_id == "B-B")
            .values(phone=a_phone)
        )
        with pytest.raises(PiiError):
            await ContactDetailsRepository(conn, ring).get("B-B")


async def test_the_database_refuses_clear_text_in_sealed_columns(runtime: Runtime) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO notifier.contact_details (borrower_id, language, phone, "
                    "updated_at) VALUES ('B-X', 'en', '+447700900999', now())"
                )
            )


async def test_rows_stored_in_clear_before_the_migration_are_sealed_by_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from collections_kit.db import make_engine

    key = base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv("NOTIFIER_PII_KEYS", f"prod1:{key}")
    await asyncio.to_thread(upgrade, bootstrap.MIGRATIONS, database_url, "notifier", "0002")
    engine = make_engine(database_url, schema="notifier")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO notifier.contact_details (borrower_id, language, email, phone, "
                    "updated_at) VALUES ('B-OLD', 'en', 'old@example.com', '+447700900333', now())"
                )
            )
        await asyncio.to_thread(upgrade, bootstrap.MIGRATIONS, database_url, "notifier")
        async with engine.connect() as conn:
            row = (await conn.execute(select(contact_details))).one()
            assert row.email.startswith("pii1:prod1:")
            assert "old@" not in row.email
            ring = NotifierSettings().key_ring()
            found = await ContactDetailsRepository(conn, ring).get("B-OLD")
        assert found is not None
        assert found[0].debtor.email == "old@example.com"
    finally:
        await engine.dispose()


ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("PUT", "/v1/borrowers/B1/contact-details", DETAILS, "contacts:write"),
    ("GET", "/v1/borrowers/B1/contact-details", None, "cases:read"),
    ("PUT", "/v1/borrowers/B1/opt-outs/sms", {"party": "debtor"}, "contacts:write"),
    ("DELETE", "/v1/borrowers/B1/opt-outs/sms", None, "contacts:write"),
    ("PUT", "/v1/borrowers/B1/do-not-contact", {"party": "debtor"}, "contacts:write"),
    ("DELETE", "/v1/borrowers/B1/do-not-contact", None, "contacts:write"),
    ("GET", "/v1/borrowers/B1/contact-preferences", None, "cases:read"),
    ("GET", "/v1/contacts?loan_id=L1", None, "cases:read"),
    ("GET", "/v1/contacts/summary", None, "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES)
async def test_each_route_needs_its_scope(
    runtime: Runtime, method: str, path: str, body: dict[str, Any] | None, scope: str
) -> None:
    others = [
        s
        for s in ("cases:read", "cases:write", "contacts:write", "pii:read", "admin")
        if s != scope
    ]
    async with client(runtime, None) as anonymous:
        missing = await anonymous.request(method, path, json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    async with client(runtime, others) as wrong:
        forbidden = await wrong.request(method, path, json=body)
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("application/problem+json")
    assert f'scope="{scope}"' in forbidden.headers["www-authenticate"]
    async with client(runtime, [scope]) as right:
        allowed = await right.request(method, path, json=body)
    assert allowed.status_code in (200, 204, 404), allowed.text
    # Health and metrics stay open for the platform's probes and scrapers.
    async with client(runtime, None) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 200
        assert (await anonymous.get("/livez")).status_code in (200, 503)


async def test_after_a_key_rotation_reseal_moves_every_value_to_the_new_key(
    database_url: str,
) -> None:
    from collections_kit.pii import KeyRing
    from notifier.adapters.reseal import reseal

    old_key, new_key = base64.b64encode(b"o" * 32).decode(), base64.b64encode(b"n" * 32).decode()
    old = NotifierSettings(database_url=database_url, pii_keys=f"k1:{old_key}")
    await migrate(bootstrap.MIGRATIONS, database_url, old.db_schema)
    runtime = bootstrap.build_runtime(old)
    try:
        async with client(runtime, ["contacts:write"]) as writer:
            assert (
                await writer.put("/v1/borrowers/B-ROT/contact-details", json=DETAILS)
            ).status_code == 204
    finally:
        await runtime.producer.stop()
        await runtime.engine.dispose()
    # Step 1: the new key joins the ring and seals new values; old ones still open.
    both = KeyRing.parse(f"k1:{old_key},k2:{new_key}")
    runtime = bootstrap.build_runtime(old.model_copy(update={"pii_keys": None}))
    try:
        async with runtime.engine.connect() as conn:
            found = await ContactDetailsRepository(conn, both).get("B-ROT")
        assert found is not None
        assert found[0].debtor.phone == "+447700900461"
        # Step 2: re-seal; step 3: the old key can go.
        assert await reseal(runtime.engine, both) == 7  # the seven columns
        assert await reseal(runtime.engine, both) == 0
        only_new = KeyRing.parse(f"k2:{new_key}")
        async with runtime.engine.connect() as conn:
            raw = (await conn.execute(select(contact_details))).one()
            found = await ContactDetailsRepository(conn, only_new).get("B-ROT")
        assert raw.email.startswith("pii1:k2:")
        assert found is not None
        assert found[0].guarantor is not None
        assert found[0].guarantor.name == "Margaret Hamilton"
    finally:
        await runtime.producer.stop()
        await runtime.engine.dispose()
