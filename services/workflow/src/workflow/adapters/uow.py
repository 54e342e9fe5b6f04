"""The workflow's unit of work in PostgreSQL: its repositories on one transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.uow import SqlUnitOfWork
from workflow.adapters.repository import CaseRepository, TimerRepository
from workflow.adapters.requests import IdempotencyKeyRepository


class SqlWorkflowUnitOfWork(SqlUnitOfWork):
    cases: CaseRepository
    requests: IdempotencyKeyRepository
    timers: TimerRepository

    def bind(self, conn: AsyncConnection) -> None:
        self.cases = CaseRepository(conn)
        self.requests = IdempotencyKeyRepository(conn)
        self.timers = TimerRepository(conn)
