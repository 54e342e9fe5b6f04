"""Migration 0021 on the real database: the timeline written before it reads the same
through the view after it, entries written after it follow the old ones in id order
(those in a journalled input's row and those in rows of their own alike), and the
downgrade writes the inputs' entries back as rows, in the same order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.db import insert_rows, make_engine
from tests.support import downgrade, migrate
from workflow.adapters.repository import BatchState, CaseRepository
from workflow.adapters.tables import timeline_rows
from workflow.domain.model import Case, CaseStatus, TimelineEntry
from workflow.domain.policy import Stage
from workflow.entrypoints.bootstrap import MIGRATIONS

SCHEMA = "workflow"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


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


async def _timeline(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, case_id, at, kind, cause, actor, stage_before, stage_after, "
                "status_before, status_after, policy_version, detail FROM timeline ORDER BY id"
            )
        )
        return [tuple(r) for r in rows]


async def _relkind(engine: AsyncEngine, name: str) -> str | None:
    async with engine.connect() as conn:
        kind: str | None = await conn.scalar(
            text(
                "SELECT c.relkind::text FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relname = :t"
            ),
            {"s": SCHEMA, "t": name},
        )
        return kind


def _case(loan_id: str) -> Case:
    return Case(
        case_id=f"case-{loan_id}",
        loan_id=loan_id,
        borrower_id="B1",
        product="consumer-loan",
        currency="EUR",
        stage=Stage.WARNING,
        status=CaseStatus.OPEN,
        exit=None,
        outstanding=Decimal("100"),
        amount_overdue=Decimal("100"),
        days_past_due=5,
        last_overdue_as_of=T0,
        borrower_time_zone="Europe/Berlin",
        jurisdiction="DE",
        policy_version="p1",
        opened_at=T0,
        updated_at=T0,
    )


def _entry(kind: str) -> TimelineEntry:
    return TimelineEntry(
        kind=kind,
        cause="evt-1",
        stage_before=Stage.WARNING,
        stage_after=Stage.WARNING,
        status_before=CaseStatus.OPEN,
        status_after=CaseStatus.OPEN,
        policy_version="p1",
        detail={"n": kind},
    )


async def test_0021_keeps_the_old_timeline_first_and_its_downgrade_writes_entries_back(
    database_url: str, engine: AsyncEngine
) -> None:
    await _migrate(database_url, "0020")
    async with engine.begin() as conn:
        # Before 0021: a row per entry, and a journal row per input, each with its own ids
        # (more entries than 1024 per input: the slots must start above the entries too).
        await conn.execute(
            text(
                "INSERT INTO timeline (case_id, loan_id, at, kind, cause, actor, stage_before, "
                "stage_after, status_before, status_after, policy_version, detail) "
                "SELECT 'case-L1', 'L1', :t, 'old_' || n, 'c', 'a', 'warning', 'warning', "
                "'open', 'open', 'p0', jsonb_build_object('n', n) "
                "FROM generate_series(1, 5000) AS n"
            ),
            {"t": T0},
        )
        await conn.execute(
            text(
                "INSERT INTO case_inputs (case_id, loan_id, at, cause_id, input_type, payload) "
                "SELECT 'case-L1', 'L1', :t, 'c' || n, 'OverdueReported', '{}' "
                "FROM generate_series(1, 3) AS n"
            ),
            {"t": T0},
        )
    before = await _timeline(engine)
    assert len(before) == 5000

    await _migrate(database_url, "head")
    assert await _relkind(engine, "timeline") == "v"
    assert await _timeline(engine) == before

    # After 0021: a batch journals an input with two entries, then a task entry is a row.
    at = T0 + timedelta(minutes=1)
    case = _case("L1")
    state = BatchState(cases={"L1": case})
    state.journal(case, "OverdueReported", {}, at=at, actor="workflow", cause_id="evt-1")
    state.record(
        case,
        case,
        (),
        [_entry("new_1"), _entry("new_2")],
        (),
        at=at,
        actor="workflow",
        cause_id="evt-1",
    )
    async with engine.begin() as conn:
        await CaseRepository(conn).write_batch(state, at)
        await insert_rows(
            conn,
            timeline_rows,
            [
                {
                    "case_id": "case-L1",
                    "loan_id": "L1",
                    "at": at,
                    "kind": "task_created",
                    "cause": "evt-1",
                    "actor": "workflow",
                    "policy_version": "queues/1",
                    "detail": {},
                }
            ],
        )
        journal_ids = (await conn.execute(text("SELECT id FROM case_inputs ORDER BY id"))).scalars()
        assert list(journal_ids)[-1] > 3, "the journal's ids keep rising"
        async with engine.connect() as reader:
            page = await CaseRepository(reader).timeline_of("case-L1", after_id=before[-1][0])
        assert page == []  # not committed yet
    after = await _timeline(engine)
    assert after[:5000] == before
    assert [r[3] for r in after[5000:]] == ["new_1", "new_2", "task_created"]
    assert [r[5] for r in after[5000:]] == ["workflow"] * 3
    assert after[5000][6:12] == ("warning", "warning", "open", "open", "p1", {"n": "new_1"})
    async with engine.connect() as conn:
        page = await CaseRepository(conn).timeline_of("case-L1", after_id=before[-1][0])
    assert [r.kind for r in page] == ["new_1", "new_2", "task_created"]

    await _downgrade(database_url, "0020")
    assert await _relkind(engine, "timeline") == "r"
    assert await _timeline(engine) == after
    async with engine.begin() as conn:
        # The identities go on above every id kept.
        new_id = await conn.scalar(
            text(
                "INSERT INTO timeline (case_id, loan_id, at, kind, cause, actor, "
                "policy_version, detail) VALUES ('case-L1', 'L1', :t, 'later', 'c', 'a', "
                "'p0', '{}') RETURNING id"
            ),
            {"t": at},
        )
        assert new_id > after[-1][0]
        await conn.execute(
            text(
                "INSERT INTO case_inputs (case_id, loan_id, at, cause_id, input_type, payload) "
                "VALUES ('case-L1', 'L1', :t, 'c9', 'OverdueReported', '{}')"
            ),
            {"t": at},
        )
    again = await _timeline(engine)

    await _migrate(database_url, "head")  # and up again
    assert await _timeline(engine) == again


async def test_the_measures_read_each_case_s_entries_through_the_index(
    database_url: str, engine: AsyncEngine
) -> None:
    """A page of histories reads its cases' journal rows by case id: joined whole, the view
    would expand every journal row's entries (the planner flattens a plain lateral join)."""
    await _migrate(database_url, "head")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO cases (case_id, loan_id, borrower_id, product, currency, stage, "
                "status, outstanding, amount_overdue, days_past_due, last_overdue_as_of, "
                "borrower_time_zone, jurisdiction, policy_version, opened_at, updated_at) "
                "SELECT 'case-' || n, 'L' || n, 'B', 'p', 'EUR', 'warning', 'open', 1, 1, 5, "
                ":t, 'UTC', 'DE', 'p1', :t, :t FROM generate_series(1, 5000) AS n"
            ),
            {"t": T0},
        )
        await conn.execute(
            text(
                "INSERT INTO case_inputs (case_id, loan_id, at, cause_id, input_type, payload, "
                "actor, entries) SELECT 'case-' || (n % 5000 + 1), 'L', :t, 'c' || n, 'X', "
                "'{}', 'w', jsonb_build_array(jsonb_build_object('kind', 'contact_sent', "
                "'cause', 'c', 'policy_version', 'p1', 'detail', '{}'::jsonb)) "
                "FROM generate_series(1, 20000) AS n"
            ),
            {"t": T0},
        )
        await conn.execute(text("ANALYZE cases, case_inputs, timeline_rows"))
    async with engine.begin() as conn:
        page = await CaseRepository(conn).histories(T0, T0 + timedelta(days=1), limit=10)
        scans = await conn.scalar(
            text(
                "SELECT seq_scan FROM pg_stat_xact_user_tables "
                "WHERE schemaname = :s AND relname = 'case_inputs'"
            ),
            {"s": SCHEMA},
        )
    assert len(page) == 10
    assert all(len(h.entries) == 4 for h in page)
    assert scans == 0
