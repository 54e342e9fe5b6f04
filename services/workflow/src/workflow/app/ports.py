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
from workflow.domain.model import Case, ContactIntent, Hold

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


class IdempotencyKeys(Protocol):
    async def claim(self, key: str, request_hash: str) -> bool: ...

    async def kept(self, key: str) -> KeptAnswer: ...

    async def keep(self, key: str, status: int, body: dict[str, Any]) -> None: ...


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


class WorkflowUnitOfWork(UnitOfWork, Protocol):
    @property
    def cases(self) -> CaseStore: ...

    @property
    def idempotency_keys(self) -> IdempotencyKeys: ...

    @property
    def timers(self) -> TimerStore: ...


class StartUnitOfWork(Protocol):
    def __call__(self, *, actor: str = ...) -> WorkflowUnitOfWork: ...
