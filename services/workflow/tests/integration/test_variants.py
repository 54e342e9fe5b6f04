"""Champion-challenger against the real broker and PostgreSQL: cases opened over Kafka
store the variant their loan id is assigned, are decided by it, name it on every timeline
entry, and keep it after the shares change and the service restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.db import make_engine
from scripts import lending
from tests.support import eventually, migrate, mismatched_replays, running
from workflow.adapters.policy_file import policy_book
from workflow.domain.policy import assign_variant
from workflow.entrypoints import bootstrap
from workflow.settings import WorkflowSettings

SHIPPED = Path(__file__).resolve().parents[2] / "src/workflow/policies/consumer-loan.toml"
READ = dev_headers(["cases:read"], subject="reader")

# The challenger sends the formal notice at 20 days past due instead of 30.
VARIANTS = """
[variants.champion]
share = {champion}

[variants.challenger]
share = {challenger}
stages.formal_notice.min_days_past_due = 20
"""


def _loan_in(variant: str, shares: tuple[tuple[str, int], ...], prefix: str) -> str:
    return next(
        f"{prefix}{i}" for i in range(1000) if assign_variant(f"{prefix}{i}", shares) == variant
    )


async def _case(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


async def test_a_case_is_decided_by_its_variant_and_keeps_it_across_a_share_change(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    lender: lending.Lender,
    tmp_path: Path,
) -> None:
    policy = tmp_path / "consumer-loan.toml"
    policy.write_text(SHIPPED.read_text() + VARIANTS.format(champion=50, challenger=50))
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "policy_files": [str(policy)],
        }
    )
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    halves = (("champion", 50), ("challenger", 50))
    loans = {v: _loan_in(v, halves, "LV-") for v in ("champion", "challenger")}
    start = datetime.now(UTC) - timedelta(days=30)

    async with running(bootstrap.build_runtime(config, clock=OffsetClock())) as runtime:
        app = bootstrap.create_app(runtime, manage_runtime=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://workflow"
        ) as api:
            for loan in loans.values():
                await lender.publish(lending.overdue(loan, Decimal("1000.00"), as_of=start))
            for variant, loan in loans.items():
                case = await eventually(partial(_case, api, loan))
                assert case["variant"] == variant
            for loan in loans.values():
                await lender.publish(
                    lending.overdue(
                        loan, Decimal("1000.00"), dpd=25, as_of=start + timedelta(days=20)
                    )
                )

            async def at_25(loan: str) -> dict[str, Any] | None:
                case = await _case(api, loan)
                return case if case and case["days_past_due"] == 25 else None

            # The challenger's shorter escalation: the formal notice at 25 days, not at 30.
            assert (await eventually(lambda: at_25(loans["challenger"])))["stage"] == (
                "formal_notice"
            )
            assert (await eventually(lambda: at_25(loans["champion"])))["stage"] == "warning"
            for variant, loan in loans.items():
                page = (await api.get(f"/v1/cases/{loan}/timeline", headers=READ)).json()
                assert page["entries"]
                # Every entry the case's policy decided; work-queue steps (task_*) are the
                # queue policy's, written by the task store, and carry no variant.
                decided = [e for e in page["entries"] if not e["kind"].startswith("task_")]
                assert {e["detail"].get("variant") for e in decided} == {variant}

    # The shares change (everything new to the champion) and the service restarts with them.
    policy.write_text(SHIPPED.read_text() + VARIANTS.format(champion=100, challenger=0))
    async with running(bootstrap.build_runtime(config, clock=OffsetClock())) as runtime:
        app = bootstrap.create_app(runtime, manage_runtime=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://workflow"
        ) as api:
            newcomer = _loan_in("challenger", halves, "LN-")
            await lender.publish(lending.overdue(newcomer, Decimal("1000.00"), as_of=start))
            for loan in loans.values():
                await lender.publish(
                    lending.overdue(
                        loan, Decimal("1000.00"), dpd=26, as_of=start + timedelta(days=21)
                    )
                )

            async def at_26(loan: str) -> dict[str, Any] | None:
                case = await _case(api, loan)
                return case if case and case["days_past_due"] == 26 else None

            for variant, loan in loans.items():
                assert (await eventually(partial(at_26, loan)))["variant"] == variant
            # A new case, once the challenger's, is now the champion's.
            assert (await eventually(lambda: _case(api, newcomer)))["variant"] == "champion"

    engine = make_engine(database_url, schema=config.db_schema)
    try:
        assert await mismatched_replays(engine, policies=policy_book([policy])) == []
    finally:
        await engine.dispose()
