"""An agency's view of a placed case across three real processes, the broker and
PostgreSQL.

overdue event → case → placed with an agency (workflow, policy data) → the notifier
learns it from collections.placements.v1 → the agency reads the borrower's contact details
(and another agency is refused) → the borrower repays in full → the recall reaches the
notifier: the agency's read is refused from then on, in both services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from collections_kit.auth import dev_headers
from scripts import lending
from scripts.services import Fleet
from tests.smtp_sink import SmtpSink
from tests.support import eventually, fleet_running

POLICY = """
version = "placements/e2e"

[[tiers]]
tier = "primary"
stages = ["warning"]
min_days_past_due = 1
min_balance = "100.00"
period_days = 90

[[tiers.agencies]]
agency = "agency-e2e"
share = 1
commission_rate = "0.20"
"""

AGENCY = dev_headers(["collections:agency"], subject="agency-e2e")
OTHER_AGENCY = dev_headers(["collections:agency"], subject="agency-other")
CRM = dev_headers(["contacts:write"], subject="crm")


@pytest.fixture
async def fleet(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> AsyncIterator[Fleet]:
    policy = tmp_path / "placements.toml"
    policy.write_text(POLICY)
    async with fleet_running(
        stack,
        database_url,
        topic_prefix,
        tmp_path,
        base_port=18320,
        smtp_port=smtp_sink.port,
        extra_env={"workflow": {"WORKFLOW_PLACEMENT_POLICY_FILE": str(policy)}},
    ) as fleet:
        yield fleet


async def status(url: str, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(timeout=10.0) as http:
        return (await http.get(url, headers=headers)).status_code


async def test_an_agency_reads_a_placed_borrowers_details_until_the_recall(
    fleet: Fleet, lender: lending.Lender
) -> None:
    loan, borrower = "L-agency-e2e", "B-agency-e2e"
    notifier, workflow = fleet["notifier"].base_url, fleet["workflow"].base_url
    details = f"{notifier}/v1/agency/borrowers/{borrower}/contact-details"
    placed_case = f"{workflow}/v1/placements/{loan}"
    async with httpx.AsyncClient(timeout=10.0) as http:
        put = await http.put(
            f"{notifier}/v1/borrowers/{borrower}/contact-details",
            json={"language": "en", "email": "agency.e2e@example.com", "phone": "+447700900555"},
            headers=CRM,
        )
        assert put.status_code == 204, put.text
    assert await status(details, AGENCY) == 403  # nothing placed yet

    await lender.publish(lending.overdue(loan, Decimal("900.00"), borrower_id=borrower))

    async def readable() -> bool:
        return await status(details, AGENCY) == 200

    await eventually(readable)
    assert await status(placed_case, AGENCY) == 200
    assert await status(details, OTHER_AGENCY) == 403
    assert await status(placed_case, OTHER_AGENCY) == 403

    await lender.publish(lending.repayment(loan, Decimal("900.00"), Decimal("0.00")))

    async def recalled() -> bool:
        return await status(details, AGENCY) == 403

    await eventually(recalled)
    assert await status(placed_case, AGENCY) == 403
