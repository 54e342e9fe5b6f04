"""Commands from people, through the REST API: one transaction, idempotent by key.

Every write carries an ``Idempotency-Key``. The key is claimed in the same transaction as
the change and stores the response: a retry with the same key and body replays it; the
same key with another body is refused. The key also seeds every id the command derives,
so even a retried request that raced its first attempt decides identically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import Clock
from collections_kit.outbox import Tx, flush
from collections_kit.settings import ServiceSettings
from workflow.adapters.tables import idempotency_keys, outbox
from workflow.app.handlers import Workflow
from workflow.domain import decide as d
from workflow.domain.model import Case


@dataclass(frozen=True)
class Outcome:
    status: int
    case: Case | None = None
    problem: str | None = None
    replayed_body: dict[str, Any] | None = None


class KeyReusedError(Exception):
    """The Idempotency-Key was used before for a different request."""


class Commands:
    def __init__(
        self, engine: AsyncEngine, settings: ServiceSettings, clock: Clock, workflow: Workflow
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._workflow = workflow

    async def execute(
        self,
        *,
        loan_id: str,
        key: str,
        route: str,
        body: dict[str, Any],
        actor: str,
        make: Callable[[str], d.Input],
        render: Callable[[Outcome, Tx], Any],
    ) -> tuple[int, dict[str, Any]]:
        """Run ``make(request_id)`` against the loan's case; return (status, JSON body)."""
        # The actor is part of the request: another caller reusing a key is refused, never
        # answered with the first caller's replay.
        request_hash = hashlib.sha256(
            json.dumps(
                {"route": route, "loan_id": loan_id, "body": body, "actor": actor},
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        async with self._engine.begin() as conn:
            tx = Tx(
                conn=conn,
                now=self._clock.now(),
                source=self._settings.service_name,
                topic_prefix=self._settings.topic_prefix,
                actor=actor,
            )
            claimed = await conn.scalar(
                pg_insert(idempotency_keys)
                .values(key=key, request_hash=request_hash)
                .on_conflict_do_nothing()
                .returning(idempotency_keys.c.key)
            )
            if claimed is None:
                row = (
                    await conn.execute(
                        select(idempotency_keys).where(idempotency_keys.c.key == key)
                    )
                ).one()
                if row.request_hash != request_hash:
                    raise KeyReusedError(key)
                return int(row.status), dict(row.body)
            before, decision = await self._workflow.run(tx, loan_id, make(key), f"request:{key}")
            if before is None:
                outcome = Outcome(404, problem=f"No collections case for loan {loan_id}.")
            elif decision.rejected is not None:
                outcome = Outcome(409, case=before, problem=decision.rejected)
            else:
                outcome = Outcome(200, case=decision.case or before)
            status, rendered = outcome.status, await render(outcome, tx)
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.key == key)
                .values(status=status, body=rendered)
            )
            await flush(tx, outbox, self._settings.db_schema)
            return status, rendered
