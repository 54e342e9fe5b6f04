"""The unit of work's in-memory twin, for app-layer unit tests in every service.

A transaction on a deep copy of the fake database's data: ``commit`` replaces the data and
publishes the outbox rows the transaction staged; leaving the block without it drops both,
as a rollback would. Each service's test binds its own fake repositories in ``bind``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.clock import Clock
from collections_kit.outbox import Tx


class FakeDatabase(Protocol):
    data: Any
    published: list[dict[str, Any]]


DB = TypeVar("DB", bound=FakeDatabase)


class InMemoryUnitOfWork(Generic[DB]):
    source: ClassVar[str] = "test"

    def __init__(self, db: DB, clock: Clock, actor: str = "system") -> None:
        self._db, self._clock, self._actor = db, clock, actor

    def bind(self, work: Any) -> None:
        """Attach the service's fake repositories to ``work``, this transaction's data."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._work = copy.deepcopy(self._db.data)
        self.tx = Tx(
            conn=cast(AsyncConnection, None),  # the fakes hold the data, not a connection
            now=self._clock.now(),
            source=self.source,
            topic_prefix="",
            actor=self._actor,
        )
        self.bind(self._work)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @property
    def now(self) -> datetime:
        return self.tx.now

    async def commit(self) -> None:
        self._db.data = self._work
        self._db.published.extend(self.tx.staged)
