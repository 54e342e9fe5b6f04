"""The metrics that matter are on ``/metrics`` of running services: the three runtimes run
in-process against the real broker and PostgreSQL, a few loans (and one malformed record) go
through, and each service's app answers ``/metrics`` with them."""

from __future__ import annotations

import re
from decimal import Decimal

import httpx
from fastapi import FastAPI

from collections_kit.topics import Topic
from scripts import lending
from scripts.infra import producer
from tests.support import eventually

# name -> must it have a sample already (a labelled series appears on its first event).
SAMPLED = {
    "collections_consumer_lag",
    "collections_outbox_backlog",
    "collections_outbox_oldest_age_seconds",
    "collections_dead_letters_total",
    "workflow_timers_overdue",
    "workflow_timers_oldest_overdue_seconds",
    "ledger_sync_balance_checks_answered_total",
    "ledger_sync_balance_check_seconds_count",
    "notifier_contact_decisions_total",
    "notifier_dispatch_held",
}
# Declared (HELP/TYPE on /metrics) but only sampled when the ledger API is called or fails.
DECLARED = {
    "ledger_sync_ledger_api_seconds",
    "ledger_sync_ledger_api_calls_total",
    "ledger_sync_balance_check_failures_total",
    "notifier_delivery_receipts_total",
    # The KPI gauges: set by the workflow's first refresh, one interval after its start.
    "collections_kpi_cure_rate",
    "collections_kpi_stage_funnel",
    "collections_kpi_suppressed_contacts",
    "collections_kpi_refreshed_timestamp_seconds",
}


async def _metrics(app: FastAPI) -> str:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://service"
    ) as client:
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        return answer.text


def _sampled(text: str, name: str) -> bool:
    return re.search(rf"^{re.escape(name)}(\{{| )", text, re.MULTILINE) is not None


async def test_every_metric_that_matters_is_on_metrics(
    apps: dict[str, FastAPI], stack: dict[str, str], topic_prefix: str
) -> None:
    p = await producer(stack["kafka_bootstrap"])
    try:
        lender = lending.Lender(p, topic_prefix)
        for loan in ("L-m1", "L-m2"):
            await lender.publish(lending.disbursement(loan, Decimal("800.00")))
            await lender.publish(lending.overdue(loan, Decimal("800.00")))
        await p.send_and_wait(topic_prefix + Topic.LOANS_OVERDUE.value, value=b"\x00", key=b"L-m3")
    finally:
        await p.stop()

    def lag_of(name: str) -> str:
        # Lag per partition of each consumer group, refreshed by idle polls too.
        return (
            rf'collections_consumer_lag\{{consumer="{re.escape(topic_prefix)}'
            rf'{name}",partition="\d+",topic="[^"]+"\}}'
        )

    async def missing() -> list[str]:
        # Every group's own lag series, not just any group's: on a loaded machine one
        # service may still be on its first batch when the others are idle.
        text = await _metrics(apps["workflow"])
        names = [name for name in SAMPLED if not _sampled(text, name)]
        return names + [
            f"lag of {n}"
            for n, app in apps.items()
            if not re.search(lag_of(n), await _metrics(app))
        ]

    async def all_sampled() -> set[str]:
        return set() if await missing() else {"ok"}

    try:
        await eventually(all_sampled, within=90)
    except AssertionError:
        raise AssertionError(f"not sampled: {sorted(await missing())}") from None

    for name, app in apps.items():
        text = await _metrics(app)
        for metric in SAMPLED | DECLARED:
            base = metric.removesuffix("_count").removesuffix("_total")
            assert re.search(rf"^# TYPE {base}(_total)? ", text, re.MULTILINE), (name, metric)
        assert re.search(lag_of(name), text), name
    workflow = await _metrics(apps["workflow"])
    assert re.search(
        rf'collections_dead_letters_total\{{consumer="{re.escape(topic_prefix)}'
        r'workflow",kind="undecodable"\} 1\.0',
        workflow,
    )
    assert re.search(r'collections_outbox_backlog\{schema="workflow"\} \d', workflow)
