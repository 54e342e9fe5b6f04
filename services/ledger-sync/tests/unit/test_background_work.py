"""Ledger-sync's background work against in-memory fakes of its ports: a reconciliation
pass (what it corrects, what it reports, when it is not this replica's turn) and the
resolver of balance checks waiting for the ledger's API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from collections_kit import contract as c
from collections_kit.clock import FixedClock
from collections_kit.contract import SPEC_BY_MODEL
from collections_kit.testing import InMemoryUnitOfWork
from ledger_sync.adapters.ledger_api import LedgerUnavailable
from ledger_sync.adapters.repository import PendingCheck, StoredAnswer
from ledger_sync.app.reconciliation import Reconciler
from ledger_sync.app.verifier import StaleCheckResolver
from ledger_sync.domain.ledger import (
    CheckPolicy,
    FreshnessPolicy,
    LedgerState,
    Posting,
    Projection,
)
from ledger_sync.domain.reconciliation import Finding, OpenCase
from ledger_sync.settings import LedgerSyncSettings

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


@dataclass
class Data:
    projections: dict[str, Projection] = field(default_factory=dict)
    open_cases: dict[str, OpenCase] = field(default_factory=dict)
    corrections: dict[str, tuple[str, Decimal, int]] = field(default_factory=dict)
    # The figures corrections set; an answer's is stored with it (figures, by check id).
    views: dict[str, tuple[str, Decimal, str]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Checks waiting for the ledger's API (with their lease), and the answers given.
    pending: dict[str, tuple[PendingCheck, datetime | None]] = field(default_factory=dict)
    answers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, tuple[str, Decimal]] = field(default_factory=dict)


@dataclass
class Database:
    data: Data = field(default_factory=Data)
    published: list[dict[str, Any]] = field(default_factory=list)


class FakeLedger:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def projection(self, loan_id: str, *, lock: bool = False) -> Projection | None:
        return self._data.projections.get(loan_id)

    async def lock_projection(self, loan_id: str) -> Projection | None:
        return self._data.projections.get(loan_id)

    async def buffered(self, loan_id: str) -> tuple[Posting, ...]:
        return ()

    async def has_gap(self, loan_id: str) -> bool:
        return False

    async def save_projection(
        self,
        projection: Projection,
        applied: tuple[Posting, ...],
        still_buffered: tuple[Posting, ...],
    ) -> None:
        self._data.projections[projection.loan_id] = projection

    async def money_in_flight(self, loan_id: str) -> Decimal:
        return Decimal(0)

    async def claim_pending(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[PendingCheck]:
        free = [p for p, until in self._data.pending.values() if until is None or until < now]
        claimed = sorted(free, key=lambda p: p.seq)[:limit]
        for p in claimed:
            self._data.pending[p.check_id] = (p, now + lease)
        return claimed

    async def take_pending(self, check_ids: Sequence[str]) -> list[PendingCheck]:
        taken = [self._data.pending.pop(i)[0] for i in check_ids if i in self._data.pending]
        return sorted(taken, key=lambda p: p.seq)

    async def save_answer(
        self,
        check_id: str,
        loan_id: str,
        answer_type: str,
        payload: dict[str, Any],
        at: Any,
        figure: tuple[str, Decimal],
    ) -> None:
        await self.save_answers([(check_id, loan_id, answer_type, payload, figure)], at)

    async def save_answers(self, answers: Sequence[StoredAnswer], at: Any) -> None:
        for check_id, _, answer_type, payload, figure in answers:
            if check_id not in self._data.answers:
                self._data.answers[check_id] = (answer_type, payload)
                self._data.figures[check_id] = figure


class FakeCases:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def open_cases_page(self, after_loan_id: str, limit: int) -> list[OpenCase]:
        loans = sorted(loan for loan in self._data.open_cases if loan > after_loan_id)
        return [self._data.open_cases[loan] for loan in loans[:limit]]

    async def note_correction(
        self, loan_id: str, kind: str, outstanding: Decimal, watermark: int
    ) -> None:
        self._data.corrections[loan_id] = (kind, outstanding, watermark)

    async def set_view(
        self, loan_id: str, currency: str, outstanding: Decimal, source: str, at: datetime
    ) -> None:
        self._data.views[loan_id] = (currency, outstanding, source)


class FakeRuns:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def last_started(self) -> datetime | None:
        return max((r["started_at"] for r in self._data.runs.values()), default=None)

    async def abandon_running(self) -> None:
        for run in self._data.runs.values():
            if run["status"] == "running":
                run["status"] = "abandoned"

    async def start(self, run_id: str, at: datetime) -> None:
        self._data.runs[run_id] = {"started_at": at, "status": "running"}

    async def record(
        self, run_id: str, cases: Sequence[tuple[OpenCase, Finding, str | None]]
    ) -> None:
        self._data.findings.extend((c.loan_id, f.kind, e) for c, f, e in cases)

    async def progress(
        self,
        run_id: str,
        examined: int,
        counts: dict[str, int],
        finished_at: datetime | None = None,
    ) -> None:
        run = self._data.runs[run_id]
        run.update(examined=examined, counts=counts)
        if finished_at is not None:
            run.update(status="completed", finished_at=finished_at)


class FakeUnitOfWork(InMemoryUnitOfWork[Database]):
    source = "ledger-sync"

    def bind(self, work: Data) -> None:
        self.ledger = FakeLedger(work)
        self.cases = FakeCases(work)
        self.runs = FakeRuns(work)


@dataclass
class Pass:
    db: Database
    clock: FixedClock
    lock_free: bool = True

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db, self.clock)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[bool]:
        yield self.lock_free

    def reconciler(self) -> Reconciler:
        return Reconciler(
            settings=LedgerSyncSettings(reconciliation_interval_s=900, reconciliation_batch=2),
            uow=self.uow,
            lock=self.lock,
            api=None,
            clock=self.clock,
            policy=CheckPolicy(tolerance=Decimal("1.00")),
            freshness=FreshnessPolicy(max_age=None),
        )


@pytest.fixture
def world() -> Pass:
    db = Database()
    data = db.data
    # L1: the ledger says paid; L2: in sync; L3: the ledger has never posted for it.
    for loan, balance in (("L1", "0.00"), ("L2", "500.00")):
        data.projections[loan] = Projection(loan, "CNY", Decimal(balance), 7, NOW)
    for loan in ("L1", "L2", "L3"):
        data.open_cases[loan] = OpenCase(loan, f"C-{loan}", Decimal("500.00"), "CNY")
    return Pass(db, FixedClock(NOW))


async def test_a_pass_corrects_what_the_ledger_contradicts_and_reports_every_case(
    world: Pass,
) -> None:
    run_id = await world.reconciler().run_pass()
    assert run_id is not None
    data = world.db.data
    assert data.runs[run_id]["status"] == "completed"
    assert data.runs[run_id]["examined"] == 3
    assert data.runs[run_id]["counts"] == {
        "nothing_owed": 1,
        "published": 1,
        "in_sync": 1,
        "skipped": 1,
    }
    assert data.corrections == {"L1": ("nothing_owed", Decimal("0.00"), 7)}
    assert data.views["L1"] == ("CNY", Decimal("0.00"), "correction")
    corrected = SPEC_BY_MODEL[c.BalanceCorrected].topic.value
    assert [row["topic"] for row in world.db.published] == [corrected]  # for L1 only
    assert {(loan, kind) for loan, kind, _ in data.findings} >= {
        ("L1", "nothing_owed"),
        ("L3", "skipped"),
    }


async def test_a_pass_soon_after_another_is_skipped(world: Pass) -> None:
    reconciler = world.reconciler()
    assert await reconciler.run_pass() is not None
    published = len(world.db.published)
    world.clock.set(NOW + timedelta(minutes=5))
    assert await reconciler.run_pass() is None
    assert len(world.db.published) == published
    assert len(world.db.data.runs) == 1


async def test_no_pass_without_the_lock(world: Pass) -> None:
    world.lock_free = False
    assert await world.reconciler().run_pass() is None
    assert world.db.data.runs == {}
    assert world.db.published == []


# --- checks waiting for the ledger's API ----------------------------------------------------


class FakeLedgerApi:
    """The ledger's own API: knows some loans, or is down."""

    def __init__(self, known: dict[str, LedgerState], *, up: bool = True) -> None:
        self.known, self.up = known, up
        self.asked: list[str] = []

    async def balance(self, loan_id: str) -> LedgerState | None:
        self.asked.append(loan_id)
        if not self.up:
            raise LedgerUnavailable("connection refused")
        return self.known.get(loan_id)

    async def postings_after(self, loan_id: str, after: int, up_to: int) -> list[Posting]:
        return []


def waiting(world: Pass, check_id: str, loan_id: str, seq: int) -> None:
    check = c.BalanceCheckRequested(
        check_id=check_id,
        loan_id=loan_id,
        currency="CNY",
        expected_outstanding=Decimal("500.00"),
        requested_at=NOW - timedelta(seconds=5),
    )
    payload = check.model_dump(mode="json")
    world.db.data.pending[check_id] = (PendingCheck(check_id, seq, loan_id, payload), None)


def resolver(world: Pass, api: FakeLedgerApi) -> StaleCheckResolver:
    return StaleCheckResolver(
        settings=LedgerSyncSettings(),
        uow=world.uow,
        api=api,
        clock=world.clock,
        policy=CheckPolicy(tolerance=Decimal("1.00")),
        freshness=FreshnessPolicy(max_age=None),
    )


def answers_published(world: Pass) -> list[str]:
    topic = SPEC_BY_MODEL[c.BalanceConfirmed].topic.value
    return [row["topic"] for row in world.db.published if row["topic"] == topic]


async def test_a_check_whose_projection_is_fresh_by_now_is_confirmed_without_asking(
    world: Pass,
) -> None:
    waiting(world, "chk-1", "L2", 1)  # L2's projection is current: 500.00
    api = FakeLedgerApi({})
    assert await resolver(world, api).resolve_once() == 1
    data = world.db.data
    assert api.asked == []
    assert data.pending == {}
    assert data.answers["chk-1"][0] == "confirmed"
    # The ledger's amount is the collections side's figure from here, stored with the
    # answer: no figure of its own.
    assert data.figures["chk-1"] == ("CNY", Decimal("500.00"))
    assert data.views == {}
    assert len(answers_published(world)) == 1


async def test_a_check_the_ledger_does_not_know_is_refused_as_unknown(world: Pass) -> None:
    waiting(world, "chk-3", "L3", 1)  # L3: no projection, and the ledger knows nothing
    api = FakeLedgerApi({})
    assert await resolver(world, api).resolve_once() == 1
    answer_type, payload = world.db.data.answers["chk-3"]
    assert api.asked == ["L3"]
    assert answer_type == "refused"
    assert payload["reason"] == "unknown_loan"
    assert world.db.data.pending == {}
    # Refused: the collections side keeps what it expected.
    assert world.db.data.figures["chk-3"] == ("CNY", Decimal("500.00"))


async def test_with_the_ledger_down_a_stale_check_is_refused_never_confirmed(
    world: Pass,
) -> None:
    waiting(world, "chk-3", "L3", 1)
    assert await resolver(world, FakeLedgerApi({}, up=False)).resolve_once() == 1
    answer_type, payload = world.db.data.answers["chk-3"]
    assert answer_type == "refused"
    assert payload["reason"] == "projection_stale"
    assert "ledger API unavailable" in payload["detail"]


async def test_a_leased_check_is_not_leased_again_until_its_lease_runs_out(
    world: Pass,
) -> None:
    waiting(world, "chk-1", "L2", 1)
    async with world.uow() as uow:
        await uow.ledger.claim_pending(NOW, timedelta(seconds=60), 10)
        await uow.commit()
    assert await resolver(world, FakeLedgerApi({})).resolve_once() == 0
    assert world.db.data.answers == {}


async def test_a_check_on_a_paid_loan_leaves_the_ledgers_figure_with_its_answer(
    world: Pass,
) -> None:
    """nothing_owed: the refusal's figure is the ledger's (the settled correction's), not
    what the workflow expected; the correction is noted on the case, no figure of its own
    is written."""
    waiting(world, "chk-paid", "L1", 1)  # L1's projection: 0.00
    assert await resolver(world, FakeLedgerApi({})).resolve_once() == 1
    data = world.db.data
    assert data.answers["chk-paid"][1]["reason"] == "nothing_owed"
    assert data.figures["chk-paid"] == ("CNY", Decimal("0.00"))
    assert data.corrections == {"L1": ("nothing_owed", Decimal("0.00"), 7)}
    assert data.views == {}
