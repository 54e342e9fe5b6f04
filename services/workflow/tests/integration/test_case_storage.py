"""The cases table takes the daily overdue update in place (migration 0004), and contact
intents the answer to their balance check (migration 0005).

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
    return m.OverdueReported(
        f"e{dpd}",
        "L1",
        "B1",
        "consumer-loan",
        "CNY",
        Decimal(amount),
        Decimal(amount),
        dpd,
        as_of,
        "Asia/Shanghai",
        "CN",
    )


def columns_a_daily_update_writes() -> set[str]:
    """Read off the domain: the fields a next day's report changes on an open case."""

    def ids(label: str) -> str:
        return f"id-{label}"

    opened = d.decide(None, [], overdue(5, NOW, "100.00"), DEFAULT_POLICY, NOW, ids).case
    assert opened is not None
    later = NOW + timedelta(days=1)
    updated = d.decide(opened, [], overdue(6, later, "101.00"), DEFAULT_POLICY, later, ids).case
    assert updated is not None
    assert updated.stage is opened.stage
    return {
        f.name
        for f in dataclasses.fields(opened)
        if getattr(opened, f.name) != getattr(updated, f.name)
    }


def columns_an_intents_answers_write() -> set[str]:
    """Read off the domain: the fields of a planned intent that its balance check's answer
    changes (confirmed: commanded; refused: waits to ask again)."""

    def ids(label: str) -> str:
        return f"id-{label}"

    opening = d.decide(None, [], overdue(5, NOW, "100.00"), DEFAULT_POLICY, NOW, ids)
    assert opening.case is not None
    assert opening.intents
    planned = opening.intents[0]
    answers: list[m.BalanceConfirmed | m.BalanceRefused] = [
        m.BalanceConfirmed(
            "e-conf",
            planned.check_id,
            "conf-1",
            Decimal("100.00"),
            7,
            NOW,
            NOW + timedelta(hours=1),
        ),
        m.BalanceRefused("e-ref", planned.check_id, "stale", ""),
    ]
    written = set()
    for answer in answers:
        (after,) = d.decide(opening.case, [planned], answer, DEFAULT_POLICY, NOW, ids).intents
        written |= {
            f.name
            for f in dataclasses.fields(planned)
            if getattr(planned, f.name) != getattr(after, f.name)
        }
    return written


async def _indexed_and_options(database_url: str, table: str) -> tuple[set[str], list[str]]:
    await migrate(bootstrap.MIGRATIONS, database_url, "workflow")
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            indexed = set(
                (
                    await conn.execute(
                        text(
                            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                            "WHERE i.indrelid = CAST(:t AS regclass)"
                        ),
                        {"t": table},
                    )
                ).scalars()
            )
            options = await conn.scalar(
                text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                {"t": table},
            )
    finally:
        await engine.dispose()
    return indexed, list(options or [])


async def test_no_index_of_cases_covers_a_column_the_daily_update_writes(database_url: str) -> None:
    written = columns_a_daily_update_writes()
    assert {"days_past_due", "outstanding", "last_overdue_as_of"} <= written
    indexed, options = await _indexed_and_options(database_url, "workflow.cases")
    assert "loan_id" in indexed  # the query reads what it should
    assert not indexed & written
    assert "fillfactor=80" in options


async def test_no_index_of_intents_covers_a_column_their_status_changes_write(
    database_url: str,
) -> None:
    written = columns_an_intents_answers_write()
    assert {"status", "command_id", "confirmation_id", "reason", "attempts"} <= written
    indexed, options = await _indexed_and_options(database_url, "workflow.contact_intents")
    assert "case_id" in indexed  # the batch load reads a case's intents
    assert not indexed & written
    assert "fillfactor=80" in options
