"""What the workflow's app layer needs of storage: repositories in one unit of work.

The adapters implement them in PostgreSQL (adapters/uow.py); the app's unit tests use
in-memory fakes. Repositories are read-only properties here so that an implementation may
narrow them to its own classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from collections_kit.uow import UnitOfWork
from workflow.domain.measures import CaseHistory
from workflow.domain.model import Case, ContactIntent, Hold
from workflow.domain.tasks import Task, Withdrawal

if TYPE_CHECKING:  # the adapters implement these ports (and import this module)
    from workflow.adapters.repository import BatchState


@dataclass(frozen=True)
class KeptAnswer:
    """What a claimed idempotency key was used for, and the answer it got."""

    request_hash: str
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class DueTimer:
    timer_id: str
    loan_id: str
    kind: str
    token: str
    due_at: datetime


class CaseStore(Protocol):
    async def get(self, loan_id: str, *, lock: bool = False) -> Case | None: ...

    async def load_for_batch(
        self, loan_ids: Sequence[str], check_ids: Sequence[str], intent_ids: Sequence[str]
    ) -> BatchState: ...

    async def write_batch(self, state: BatchState, at: datetime) -> None: ...

    async def intents_of(self, case_id: str) -> list[ContactIntent]: ...

    async def contacts_made_during(self, case_id: str, hold: Hold) -> list[dict[str, Any]]: ...

    async def prune_money_seen(self, before: datetime, *, limit: int = 10_000) -> int: ...

    async def histories(
        self, start: datetime, end: datetime, *, after: str = "", limit: int | None = None
    ) -> list[CaseHistory]:
        """The case timelines the measures of ``[start, end)`` read (domain/measures.py),
        a page of up to ``limit`` cases after case id ``after``, in case id order."""
        ...


class IdempotencyKeys(Protocol):
    async def claim(self, key: str, request_hash: str) -> bool: ...

    async def kept(self, key: str) -> KeptAnswer: ...

    async def keep(self, key: str, status: int, body: dict[str, Any]) -> None: ...

    async def prune(self, before: datetime, *, limit: int = 10_000) -> int:
        """Forget keys claimed before ``before``, at most ``limit``; how many."""
        ...


class TimerStore(Protocol):
    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(timer id, loan id) of unfired timers due by ``now``, earliest first."""
        ...

    async def lock_unfired(self, timer_id: str) -> DueTimer | None:
        """The timer, locked, if no one fired or holds it (``None`` then: skip it)."""
        ...

    async def mark_fired(self, timer_id: str, at: datetime) -> None: ...

    async def next_due(self) -> datetime | None: ...

    async def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        """How many unfired timers are past due (capped), and the oldest due time."""
        ...


@dataclass(frozen=True)
class TaskStep:
    """A step of a task for its case's timeline (task_created, task_leased, ...)."""

    task: Task
    kind: str
    detail: dict[str, Any]
    # The input or request that made the step, as the case's other timeline entries name it.
    cause: str


@dataclass(frozen=True)
class QueueCount:
    """Live tasks of one kind in one queue: open (waiting) or leased, and the oldest open."""

    queue: str
    kind: str
    open: int
    leased: int
    oldest_open: datetime | None


class TaskStore(Protocol):
    async def get(self, task_id: str, *, lock: bool = False) -> Task | None: ...

    async def add(self, tasks: Sequence[Task]) -> list[Task]:
        """Insert ``tasks``; those already there (same id, or a live task of the same
        case and kind) are skipped. Returns the ones inserted."""
        ...

    async def withdraw(
        self, withdrawals: Sequence[tuple[str, Withdrawal]], at: datetime
    ) -> list[Task]:
        """End the live tasks each (case id, withdrawal) names, leased ones included."""
        ...

    async def save(self, tasks: Sequence[Task]) -> None: ...

    async def leases_run_out(self, now: datetime, limit: int) -> list[Task]:
        """Leased tasks whose lease ended by ``now``, locked (skipping locked ones)."""
        ...

    async def candidates(self, queue: str, limit: int) -> list[Task]:
        """Open tasks of ``queue`` whose borrower nobody is working, most urgent and oldest
        first (not locked: each is locked when tried, by :meth:`lock_open`)."""
        ...

    async def lock_open(self, task_id: str) -> Task | None:
        """The task, locked, if it is still open and nobody else holds it (None: skip)."""
        ...

    async def claim_borrower(self, borrower_id: str) -> bool:
        """Try to take the borrower for this transaction (False: someone is taking them)."""
        ...

    async def take(self, task: Task) -> bool:
        """Save ``task``, leased; False (and nothing saved) if its borrower is leased."""
        ...

    async def record(
        self, steps: Sequence[TaskStep], *, at: datetime, actor: str, policy_version: str
    ) -> None:
        """Write ``steps`` on their cases' timelines."""
        ...

    async def counts(self, now: datetime) -> list[QueueCount]: ...


class WorkflowUnitOfWork(UnitOfWork, Protocol):
    @property
    def cases(self) -> CaseStore: ...

    @property
    def tasks(self) -> TaskStore: ...

    @property
    def idempotency_keys(self) -> IdempotencyKeys: ...

    @property
    def timers(self) -> TimerStore: ...


class StartUnitOfWork(Protocol):
    def __call__(self, *, actor: str = ...) -> WorkflowUnitOfWork: ...
