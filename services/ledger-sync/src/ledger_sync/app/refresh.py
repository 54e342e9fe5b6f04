"""Refreshing a stale projection from the ledger's API, in two steps.

1. :func:`fetch` talks HTTP and holds no database connection: the ledger can be slow or
   down, and a transaction (with its row locks) must never wait on it.
2. :func:`apply_fetched` runs inside a short transaction: it locks the loan's projection,
   applies the fetched postings through the same pure rule as the feed, and marks the
   projection verified. Postings the feed delivered in between are not counted twice,
   because the pure rule ignores everything at or below the watermark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ledger_sync.adapters.ledger_api import LedgerApi, LedgerUnavailable
from ledger_sync.app.ports import LedgerStore
from ledger_sync.domain.ledger import LedgerState, Posting, Projection, Verified, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    state: LedgerState
    postings: tuple[Posting, ...]


@dataclass(frozen=True)
class UnknownToLedger:
    pass


@dataclass(frozen=True)
class Unavailable:
    reason: str


Fetch = Fetched | UnknownToLedger | Unavailable


async def fetch(api: LedgerApi, loan_id: str, projection: Projection | None) -> Fetch:
    """Ask the ledger for the loan's balance and every posting we lack."""
    try:
        state = await api.balance(loan_id)
        if state is None or state.sequence == 0:
            return UnknownToLedger()
        after = projection.watermark if projection is not None else 0
        postings = (
            await api.postings_after(loan_id, after, state.sequence)
            if state.sequence > after
            else []
        )
        return Fetched(state, tuple(postings))
    except LedgerUnavailable as exc:
        return Unavailable(f"ledger API unavailable: {exc}")


async def apply_fetched(
    repo: LedgerStore, loan_id: str, fetched: Fetched, now: datetime
) -> Verified | None:
    current = await repo.lock_projection(loan_id)
    buffered = await repo.buffered(loan_id)
    verified = verify(current, buffered, fetched.state, fetched.postings, now)
    if verified is None:
        return None
    applied = verified.applied
    await repo.save_projection(applied.projection, applied.applied, applied.still_buffered)
    if verified.adopted_ledger_balance:
        # The projection disagreed with the ledger at the same sequence: a posting was
        # mis-recorded somewhere. The ledger wins; somebody should find out why.
        log.warning(
            "projection disagreed with the ledger's balance; adopted the ledger's",
            extra={"loan_id": loan_id, "watermark": applied.projection.watermark},
        )
    return verified
