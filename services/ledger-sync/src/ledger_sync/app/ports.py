"""What ledger-sync's background work needs of storage: repositories in one unit of work,
and the lock that lets one replica at a time run a reconciliation pass.

The adapters implement them in PostgreSQL (adapters/uow.py); the app's unit tests use
in-memory fakes. Repositories are read-only properties here so that an implementation may
narrow them to its own classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from collections_kit.uow import UnitOfWork
from ledger_sync.domain.ledger import Posting, Projection
from ledger_sync.domain.reconciliation import Finding, OpenCase

if TYPE_CHECKING:  # the adapters implement these ports
    from ledger_sync.adapters.repository import PendingCheck, StoredAnswer


class Answers(Protocol):
    """The answers given to balance checks (a check asked again gets the same one)."""

    async def save_answer(
        self,
        check_id: str,
        loan_id: str,
        answer_type: str,
        payload: dict[str, Any],
        at: Any,
        figure: tuple[str, Decimal],
    ) -> None: ...

    async def save_answers(self, answers: Sequence[StoredAnswer], at: Any) -> None: ...


class LedgerStore(Answers, Protocol):
    """The ledger projection, its buffered postings, payments in flight, waiting checks,
    the answers given."""

    async def projection(self, loan_id: str, *, lock: bool = False) -> Projection | None: ...

    async def lock_projection(self, loan_id: str) -> Projection | None: ...

    async def buffered(self, loan_id: str) -> tuple[Posting, ...]: ...

    async def has_gap(self, loan_id: str) -> bool: ...

    async def save_projection(
        self,
        projection: Projection,
        applied: tuple[Posting, ...],
        still_buffered: tuple[Posting, ...],
    ) -> None: ...

    async def money_in_flight(self, loan_id: str) -> Decimal: ...

    async def claim_pending(
        self, now: datetime, lease: timedelta, limit: int
    ) -> list[PendingCheck]: ...

    async def take_pending(self, check_ids: Sequence[str]) -> list[PendingCheck]: ...


class CaseViews(Protocol):
    """The open cases as ledger-sync knows them, and what the collections side holds (set
    here by a correction; an answer's figure is stored with the answer)."""

    async def open_cases_page(self, after_loan_id: str, limit: int) -> list[OpenCase]: ...

    async def note_correction(
        self, loan_id: str, kind: str, outstanding: Decimal, watermark: int
    ) -> None: ...

    async def set_view(
        self, loan_id: str, currency: str, outstanding: Decimal, source: str, at: datetime
    ) -> None: ...


class ReconciliationRuns(Protocol):
    async def last_started(self) -> datetime | None: ...

    async def abandon_running(self) -> None: ...

    async def start(self, run_id: str, at: datetime) -> None: ...

    async def record(
        self, run_id: str, cases: Sequence[tuple[OpenCase, Finding, str | None]]
    ) -> None: ...

    async def progress(
        self,
        run_id: str,
        examined: int,
        counts: dict[str, int],
        finished_at: datetime | None = None,
    ) -> None: ...


class LedgerSyncUnitOfWork(UnitOfWork, Protocol):
    @property
    def ledger(self) -> LedgerStore: ...

    @property
    def cases(self) -> CaseViews: ...

    @property
    def runs(self) -> ReconciliationRuns: ...


class StartUnitOfWork(Protocol):
    def __call__(self) -> LedgerSyncUnitOfWork: ...


class PassLock(Protocol):
    """Held for a whole reconciliation pass by one replica; entered: whether it was got."""

    def __call__(self) -> AbstractAsyncContextManager[bool]: ...
