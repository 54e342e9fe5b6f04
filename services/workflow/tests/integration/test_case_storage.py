"""The cases table takes the daily overdue update in place (migration 0004).

Every delinquent loan's overdue event arrives daily. PostgreSQL can update a row on its own
page without touching any index (a HOT update) only when no indexed column changed and the
page has room: so no index may cover a column that update writes, and pages keep room.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import migrate
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.policy import DEFAULT_POLICY
from workflow.entrypoints import bootstrap

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def overdue(dpd: int, as_of: datetime, amount: str) -> m.OverdueReported:
    return m.OverdueReported(f"e{dpd}", "L1", "B1", "consumer-loan", "CNY", Decimal(amount),
                             Decimal(amount), dpd, as_of, "Asia/Shanghai", "CN")


def columns_a_daily_update_writes() -> set[str]:
    """Read off the domain: the fields a next day's report changes on an open case."""
    def ids(label: str) -> str:
        return f"id-{label}"

    opened = d.decide(None, [], overdue(5, NOW, "100.00"), DEFAULT_POLICY, NOW, ids).case
    assert opened is not None
    later = NOW + timedelta(days=1)
    updated = d.decide(opened, [], overdue(6, later, "101.00"), DEFAULT_POLICY, later, ids).case
    assert updated is not None and updated.stage is opened.stage
    return {f.name for f in dataclasses.fields(opened)
            if getattr(opened, f.name) != getattr(updated, f.name)}


async def test_no_index_of_cases_covers_a_column_the_daily_update_writes(
        database_url: str) -> None:
    await migrate(bootstrap.MIGRATIONS, database_url, "workflow")
    written = columns_a_daily_update_writes()
    assert {"days_past_due", "outstanding", "last_overdue_as_of"} <= written
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            indexed = set((await conn.execute(text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = 'workflow.cases'::regclass"))).scalars())
            options = await conn.scalar(text(
                "SELECT reloptions FROM pg_class WHERE oid = 'workflow.cases'::regclass"))
    finally:
        await engine.dispose()
    assert "loan_id" in indexed  # the query reads what it should
    assert not indexed & written
    assert "fillfactor=80" in (options or [])
