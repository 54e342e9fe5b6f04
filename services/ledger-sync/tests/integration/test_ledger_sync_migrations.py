"""Ledger-sync's migration 0008 on the real database: the collections side's figures
written before it read the same through the view after it, a newer answer takes over, and
the downgrade writes the view's rows back into the table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.db import make_engine
from ledger_sync.adapters.cases import CasesRepository
from ledger_sync.adapters.repository import LedgerRepository
from ledger_sync.entrypoints.bootstrap import MIGRATIONS
from tests.support import downgrade, migrate

SCHEMA = "ledger_sync"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


async def _migrate(url: str, revision: str) -> None:
    await migrate(MIGRATIONS, url, SCHEMA, revision)


async def _downgrade(url: str, revision: str) -> None:
    await downgrade(MIGRATIONS, url, SCHEMA, revision)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2, schema=SCHEMA)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _views(engine: AsyncEngine) -> dict[str, tuple[str, Decimal, str, datetime]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT loan_id, currency, outstanding, source, updated_at FROM collections_views")
        )
        return {r.loan_id: (r.currency, r.outstanding, r.source, r.updated_at) for r in rows}


async def _execute(engine: AsyncEngine, sql: str, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), rows)


def _check(check_id: str, loan_id: str, expected: str) -> dict[str, Any]:
    return {
        "check_id": check_id,
        "loan_id": loan_id,
        "currency": "CNY",
        "expected_outstanding": expected,
        "requested_at": T0.isoformat(),
    }


async def test_0008_carries_the_figures_over_and_its_downgrade_writes_them_back(
    database_url: str, engine: AsyncEngine
) -> None:
    await _migrate(database_url, "0007")
    # Before 0008, every figure was a row of the table: L-a's check expectation (refused
    # as stale), L-b's confirmation (and its answer), L-c's check still waiting.
    await _execute(
        engine,
        "INSERT INTO collections_views (loan_id, currency, outstanding, source, updated_at) "
        "VALUES (:l, 'CNY', :o, :s, :t)",
        [
            {"l": "L-a", "o": Decimal("500.00"), "s": "check", "t": T0},
            {"l": "L-b", "o": Decimal("300.00"), "s": "confirmation", "t": T0},
            {"l": "L-c", "o": Decimal("40.00"), "s": "check", "t": T0},
        ],
    )
    await _execute(
        engine,
        "INSERT INTO balance_answers (check_id, loan_id, answer_type, payload, answered_at) "
        "VALUES (:c, :l, :k, CAST(:p AS jsonb), :t)",
        [
            {"c": "chk-a", "l": "L-a", "k": "refused", "p": '{"reason": "sequence_gap"}', "t": T0},
            {"c": "chk-b", "l": "L-b", "k": "confirmed", "p": "{}", "t": T0},
        ],
    )
    await _execute(
        engine,
        "INSERT INTO pending_checks (check_id, loan_id, payload, queued_at) "
        "VALUES ('chk-c', 'L-c', CAST(:p AS jsonb), :t)",
        [{"p": json.dumps(_check("chk-c", "L-c", "40.00")), "t": T0}],
    )
    await _execute(
        engine,
        "INSERT INTO open_cases (loan_id, case_id, opened_at) VALUES (:l, :c, :t)",
        [{"l": loan, "c": f"case-{loan}", "t": T0} for loan in ("L-a", "L-b", "L-c")],
    )
    before = await _views(engine)

    await _migrate(database_url, "head")
    assert await _views(engine) == before
    async with engine.connect() as conn:
        page = await CasesRepository(conn).open_cases_page("", 10)
    assert [(p.loan_id, p.collections_currency, p.collections_outstanding) for p in page] == [
        ("L-a", "CNY", Decimal("500.00")),
        ("L-b", "CNY", Decimal("300.00")),
        ("L-c", "CNY", Decimal("40.00")),
    ]

    # After 0008 an answer carries its figure, and the newest figure is the loan's.
    async with engine.begin() as conn:
        await LedgerRepository(conn).save_answer(
            "chk-a2", "L-a", "confirmed", {}, T1, ("CNY", Decimal("480.00"))
        )
    after = await _views(engine)
    assert after["L-a"] == ("CNY", Decimal("480.00"), "confirmation", T1)
    assert {k: v for k, v in after.items() if k != "L-a"} == {
        k: v for k, v in before.items() if k != "L-a"
    }

    await _downgrade(database_url, "0007")
    async with engine.connect() as conn:
        kind = await conn.scalar(
            text(
                "SELECT c.relkind::text FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relname = 'collections_views'"
            ),
            {"s": SCHEMA},
        )
        columns = set(
            (
                await conn.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = :s AND table_name = 'balance_answers'"
                    ),
                    {"s": SCHEMA},
                )
            ).scalars()
        )
    assert kind == "r", "a table again"
    assert "collections_outstanding" not in columns
    assert await _views(engine) == after

    await _migrate(database_url, "head")  # and up again
    assert await _views(engine) == after
