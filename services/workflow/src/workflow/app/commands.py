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

from workflow.app.handlers import Workflow
from workflow.app.ports import CaseStore, IdempotencyKeys, KeptAnswer, StartUnitOfWork
from workflow.domain import decide as d
from workflow.domain.model import Case, TimelineEntry


@dataclass(frozen=True)
class Outcome:
    status: int
    case: Case | None = None
    problem: str | None = None
    replayed_body: dict[str, Any] | None = None
    # What the decision put on the timeline: an answer some routes render (a proposal's).
    timeline: tuple[TimelineEntry, ...] = ()


class KeyReusedError(Exception):
    """The Idempotency-Key was used before for a different request."""


def request_hash(request: dict[str, Any]) -> str:
    """What a key is claimed for: a hash of the request's route, target, body and actor."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


async def claim_or_replay(keys: IdempotencyKeys, key: str, hashed: str) -> KeptAnswer | None:
    """Claim ``key`` for the request hashed ``hashed`` (None), or return the answer the key's
    first use got, to replay it; :class:`KeyReusedError` if that use was another request.

    A retry racing its first attempt waits on the claim until that attempt's transaction
    ends, then replays its answer."""
    if await keys.claim(key, hashed):
        return None
    kept = await keys.kept(key)
    if kept.request_hash != hashed:
        raise KeyReusedError(key)
    return kept


class Commands:
    def __init__(self, uow: StartUnitOfWork, workflow: Workflow) -> None:
        self._uow = uow
        self._workflow = workflow

    async def handle(
        self,
        *,
        loan_id: str,
        key: str,
        route: str,
        body: dict[str, Any],
        actor: str,
        make: Callable[[str], d.Input],
        render: Callable[[Outcome, CaseStore], Any],
    ) -> tuple[int, dict[str, Any]]:
        """Run ``make(request_id)`` against the loan's case; return (status, JSON body)."""
        # The actor is part of the request: another caller reusing a key is refused, never
        # answered with the first caller's replay.
        hashed = request_hash({"route": route, "loan_id": loan_id, "body": body, "actor": actor})
        async with self._uow(actor=actor) as uow:
            kept = await claim_or_replay(uow.idempotency_keys, key, hashed)
            if kept is not None:
                return kept.status, kept.body
            before, decision = await self._workflow.run(
                uow.tx, loan_id, make(key), f"request:{key}", cases=uow.cases, tasks=uow.tasks
            )
            if before is None:
                outcome = Outcome(404, problem=f"No collections case for loan {loan_id}.")
            elif decision.rejected is not None:
                outcome = Outcome(409, case=before, problem=decision.rejected)
            else:
                outcome = Outcome(200, case=decision.case or before, timeline=decision.timeline)
            status, rendered = outcome.status, await render(outcome, uow.cases)
            await uow.idempotency_keys.keep(key, status, rendered)
            await uow.commit()
            return status, rendered
