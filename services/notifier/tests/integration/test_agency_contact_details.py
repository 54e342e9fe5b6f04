"""An agency reads contact details only of the borrowers whose cases are placed with it
now, as the workflow announces placements on collections.placements.v1 (real broker and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
import pytest

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.runtime import Runtime
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from scripts import lending
from tests.support import eventually, migrate, running

DETAILS = {"language": "en", "email": "ada@example.com", "phone": "+447700900123"}
AGENCY_A = dev_headers(["collections:agency"], subject="agency-a")
AGENCY_B = dev_headers(["collections:agency"], subject="agency-b")


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
        }
    )
    await migrate(bootstrap.MIGRATIONS, database_url, settings.db_schema)
    async with running(bootstrap.build_runtime(settings)) as runtime:
        yield runtime


@pytest.fixture
async def api(notifier: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = bootstrap.create_app(notifier, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://notifier"
    ) as client:
        yield client


def notice(kind: Literal["placed", "recalled"], **more: Any) -> c.PlacementNotice:
    now = datetime.now(UTC)
    return c.PlacementNotice(
        kind=kind,
        placement_id="P-1",
        case_id="C-1",
        loan_id="L-1",
        borrower_id="B-1",
        agency="agency-a",
        tier="primary",
        stage="formal_notice",
        days_past_due=50,
        currency="CNY",
        outstanding=Decimal("1000.00"),
        placed_until=now + timedelta(days=90),
        occurred_at=now,
        **more,
    )


async def status(api: httpx.AsyncClient, headers: dict[str, str]) -> int:
    response = await api.get("/v1/agency/borrowers/B-1/contact-details", headers=headers)
    return response.status_code


async def test_an_agency_reads_contact_details_of_its_placed_cases_only(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    put = await api.put(
        "/v1/borrowers/B-1/contact-details",
        json=DETAILS,
        headers=dev_headers(["contacts:write"], subject="crm"),
    )
    assert put.status_code == 204, put.text
    # Before any placement: nobody's.
    refused = await api.get("/v1/agency/borrowers/B-1/contact-details", headers=AGENCY_A)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "placed with you" in refused.json()["detail"]

    await lender.publish(notice("placed"))
    await eventually(lambda: _is(api, AGENCY_A, 200))
    shown = (await api.get("/v1/agency/borrowers/B-1/contact-details", headers=AGENCY_A)).json()
    assert shown["phone"] == "+447700900123"
    assert shown["masked"] is False
    assert await status(api, AGENCY_B) == 403
    # Another borrower, known or not, is not agency-a's either.
    other = await api.get("/v1/agency/borrowers/B-2/contact-details", headers=AGENCY_A)
    assert other.status_code == 403

    await lender.publish(notice("recalled", reason="repaid"))
    await eventually(lambda: _is(api, AGENCY_A, 403))


async def _is(api: httpx.AsyncClient, headers: dict[str, str], expected: int) -> bool:
    return await status(api, headers) == expected
