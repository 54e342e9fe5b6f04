"""The workflow's unit of work in PostgreSQL: its repositories on one transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.uow import SqlUnitOfWork
from workflow.adapters.idempotency import IdempotencyKeyRepository
from workflow.adapters.placements import PlacementRepository
from workflow.adapters.repository import CaseRepository, TimerRepository
from workflow.adapters.tasks import TaskRepository


class SqlWorkflowUnitOfWork(SqlUnitOfWork):
    cases: CaseRepository
    idempotency_keys: IdempotencyKeyRepository
    timers: TimerRepository
    tasks: TaskRepository
    placements: PlacementRepository

    def bind(self, conn: AsyncConnection) -> None:
        self.cases = CaseRepository(conn)
        self.idempotency_keys = IdempotencyKeyRepository(conn)
        self.timers = TimerRepository(conn)
        self.tasks = TaskRepository(conn)
        self.placements = PlacementRepository(conn)
