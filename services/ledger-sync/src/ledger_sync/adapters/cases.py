"""Open cases, the collections side's view of their balances, and reconciliation reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, desc, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import insert_rows, on_conflict_update
from ledger_sync.adapters.tables import (
    collections_corrections,
    collections_views,
    open_cases,
    reconciliation_findings,
    reconciliation_runs,
)
from ledger_sync.domain.reconciliation import Finding, LastCorrection, OpenCase

# A newer case for the loan replaces the old one; its corrections start afresh.
_CASE_OPENED = (
    "ON CONFLICT (loan_id) DO UPDATE SET case_id = EXCLUDED.case_id, "
    "opened_at = EXCLUDED.opened_at, last_correction_kind = NULL, "
    "last_correction_outstanding = NULL, last_correction_watermark = NULL "
    'WHERE "open_cases".case_id <> EXCLUDED.case_id'
)
_CORRECTION_UPSERT = on_conflict_update(
    "loan_id", ("currency", "outstanding", "source", "updated_at")
)


class CasesRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def case_opened(self, loan_id: str, case_id: str, at: datetime) -> None:
        await self.cases_opened([(loan_id, case_id, at)])

    async def cases_opened(self, opened: Sequence[tuple[str, str, datetime]]) -> None:
        """``(loan id, case id, opened at)`` each, for distinct loans (one statement cannot
        upsert a row twice)."""
        # One statement for the run (a list of parameter sets was a statement per row).
        await insert_rows(
            self._conn,
            open_cases,
            [{"loan_id": loan, "case_id": case, "opened_at": at} for loan, case, at in opened],
            on_conflict=_CASE_OPENED,
        )

    async def case_closed(self, loan_id: str, case_id: str) -> None:
        # Only that case: a late close of an older case must not forget a newer one.
        await self._conn.execute(
            delete(open_cases).where(
                open_cases.c.loan_id == loan_id, open_cases.c.case_id == case_id
            )
        )

    async def note_correction(
        self, loan_id: str, kind: str, outstanding: Decimal, watermark: int
    ) -> None:
        await self._conn.execute(
            update(open_cases)
            .where(open_cases.c.loan_id == loan_id)
            .values(
                last_correction_kind=kind,
                last_correction_outstanding=outstanding,
                last_correction_watermark=watermark,
            )
        )

    async def set_view(
        self, loan_id: str, currency: str, outstanding: Decimal, source: str, at: datetime
    ) -> None:
        """A figure set by a correction. Answers store theirs with the answer, waiting checks
        theirs in the queue: the ``collections_views`` view takes the newest of the three."""
        await insert_rows(
            self._conn,
            collections_corrections,
            [
                {
                    "loan_id": loan_id,
                    "currency": currency,
                    "outstanding": outstanding,
                    "source": source,
                    "updated_at": at,
                }
            ],
            on_conflict=_CORRECTION_UPSERT,
        )

    async def open_cases_page(self, after_loan_id: str, limit: int) -> list[OpenCase]:
        """Open cases in loan id order after ``after_loan_id`` (keyset paging)."""
        # Per case, the view's row of its loan alone, each of its parts read through its
        # loan id index. The LIMIT keeps it so: without it the planner merges the page with
        # the whole view, sorting every answer ever given (EXPLAIN ANALYZE, 100,000 cases
        # and 300,000 answers: 178 ms a page, 3 ms with it).
        view = (
            select(collections_views.c.outstanding, collections_views.c.currency)
            .where(collections_views.c.loan_id == open_cases.c.loan_id)
            .limit(1)
            .lateral()
        )
        rows = await self._conn.execute(
            select(open_cases, view.c.outstanding, view.c.currency)
            .outerjoin(view, true())
            .where(open_cases.c.loan_id > after_loan_id)
            .order_by(open_cases.c.loan_id)
            .limit(limit)
        )
        return [
            OpenCase(
                loan_id=r.loan_id,
                case_id=r.case_id,
                collections_outstanding=r.outstanding,
                collections_currency=r.currency,
                last_correction=None
                if r.last_correction_kind is None
                else LastCorrection(
                    r.last_correction_kind,
                    r.last_correction_outstanding,
                    r.last_correction_watermark,
                ),
            )
            for r in rows
        ]


@dataclass(frozen=True)
class RunReport:
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    examined: int
    counts: dict[str, int]
    findings: list[dict[str, Any]]


class ReconciliationRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def last_started(self) -> datetime | None:
        return await self._conn.scalar(
            select(reconciliation_runs.c.started_at)
            .order_by(desc(reconciliation_runs.c.started_at))
            .limit(1)
        )

    async def abandon_running(self) -> None:
        """Called under the pass lock: a run still marked running has lost its replica."""
        await self._conn.execute(
            update(reconciliation_runs)
            .where(reconciliation_runs.c.status == "running")
            .values(status="abandoned")
        )

    async def start(self, run_id: str, at: datetime) -> None:
        await self._conn.execute(
            reconciliation_runs.insert().values(
                run_id=run_id, started_at=at, status="running", examined=0, counts={}
            )
        )

    async def record(
        self, run_id: str, cases: Sequence[tuple[OpenCase, Finding, str | None]]
    ) -> None:
        """Findings worth a line in the report: corrections and cases that were skipped."""
        rows = [
            {
                "run_id": run_id,
                "loan_id": case.loan_id,
                "case_id": case.case_id,
                "kind": finding.kind,
                "published": event_id is not None,
                "event_id": event_id,
                "currency": finding.currency,
                "collections_outstanding": case.collections_outstanding,
                "ledger_outstanding": finding.outstanding,
                "ledger_watermark": finding.watermark,
                "detail": finding.detail,
            }
            for case, finding, event_id in cases
            if finding.kind != "in_sync"
        ]
        if rows:
            await self._conn.execute(
                pg_insert(reconciliation_findings).values(rows).on_conflict_do_nothing()
            )

    async def progress(
        self,
        run_id: str,
        examined: int,
        counts: dict[str, int],
        finished_at: datetime | None = None,
    ) -> None:
        values: dict[str, Any] = {"examined": examined, "counts": counts}
        if finished_at is not None:
            values.update(finished_at=finished_at, status="completed")
        await self._conn.execute(
            update(reconciliation_runs).where(reconciliation_runs.c.run_id == run_id).values(values)
        )

    async def latest(self) -> RunReport | None:
        run = (
            await self._conn.execute(
                select(reconciliation_runs)
                .order_by(desc(reconciliation_runs.c.started_at))
                .limit(1)
            )
        ).first()
        if run is None:
            return None
        findings = await self._conn.execute(
            select(reconciliation_findings)
            .where(reconciliation_findings.c.run_id == run.run_id)
            .order_by(reconciliation_findings.c.loan_id)
        )
        return RunReport(
            run.run_id,
            run.started_at,
            run.finished_at,
            run.status,
            run.examined,
            dict(run.counts),
            [dict(f._mapping) for f in findings],
        )
