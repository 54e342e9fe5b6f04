"""Durable timers against the real PostgreSQL and Kafka: once, and only once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select

from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, running
from workflow.adapters.tables import cases, timeline, timers
from workflow.entrypoints import bootstrap
from workflow.settings import WorkflowSettings

STAGE_LIMIT = timedelta(days=46)  # past the warning stage's 45-day limit


def settings(stack: dict[str, str], database_url: str, prefix: str) -> WorkflowSettings:
    return WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": prefix,
        }
    )


async def count(runtime: Runtime, stmt: object) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(stmt) or 0)  # type: ignore[call-overload]


async def open_cases(stack: dict[str, str], prefix: str, runtime: Runtime, n: int) -> None:
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        lender = lending.Lender(kafka, prefix)
        await lender.publish_many(lending.overdue(f"L-t{i}", Decimal("900.00")) for i in range(n))
    finally:
        await kafka.stop()
    await eventually(lambda: reaches(runtime, select(func.count()).select_from(cases), n))


async def reaches(runtime: Runtime, stmt: object, expected: int) -> bool:
    return await count(runtime, stmt) == expected


def stage_changes() -> object:
    return (
        select(func.count())
        .select_from(timeline)
        .where(
            timeline.c.kind == "stage_changed",
            timeline.c.detail["trigger"].astext == "stage_time_limit",
        )
    )


async def test_a_timer_due_while_the_service_was_down_fires_once_after_restart(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> None:
    config = settings(stack, database_url, topic_prefix)
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    clock = OffsetClock()
    async with running(bootstrap.build_runtime(config, clock=clock)) as first:
        await open_cases(stack, topic_prefix, first, 1)
    # The service is down while the stage's time limit passes.
    clock.advance(STAGE_LIMIT)
    async with running(bootstrap.build_runtime(config, clock=clock)) as second:
        await eventually(lambda: reaches(second, stage_changes(), 1))
        await asyncio.sleep(2.0)  # a second firing would show by now
        assert await count(second, stage_changes()) == 1
        assert (
            await count(
                second,
                select(func.count())
                .select_from(timers)
                .where(timers.c.kind == "stage_time_limit", timers.c.outcome == "fired"),
            )
            == 1
        )
        async with second.engine.connect() as conn:
            stage = await conn.scalar(select(cases.c.stage))
        assert stage == "formal_notice"


async def test_two_replicas_never_fire_a_timer_twice(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> None:
    config = settings(stack, database_url, topic_prefix)
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    clock = OffsetClock()
    n = 40
    async with running(bootstrap.build_runtime(config, clock=clock)) as first:
        await open_cases(stack, topic_prefix, first, n)
    clock.advance(STAGE_LIMIT)
    async with (
        running(bootstrap.build_runtime(config, clock=clock)) as a,
        running(bootstrap.build_runtime(config, clock=clock)) as b,
    ):
        await eventually(lambda: reaches(a, stage_changes(), n), within=60)
        await asyncio.sleep(2.0)
        assert await count(b, stage_changes()) == n
        per_case = (
            select(timeline.c.case_id, func.count().label("n"))
            .where(timeline.c.kind == "stage_changed")
            .group_by(timeline.c.case_id)
        )
        async with a.engine.connect() as conn:
            assert {row.n for row in await conn.execute(per_case)} == {1}
