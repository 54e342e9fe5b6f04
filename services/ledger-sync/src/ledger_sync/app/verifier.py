"""Answers the balance checks the projection alone could not: a background worker.

Why a separate step instead of calling the ledger inside the check's handler: the handler
runs in the consumer's transaction for a whole polled batch (up to ``max_batch`` records,
locks held). Calling HTTP there would stretch that transaction by the ledger's latency
times the number of stale checks in the batch, and hold the loan's row lock (blocking its
postings) meanwhile. Here, per loan:

1. lease the waiting checks (short transaction, locked rows skipped: replicas share the
   work; a replica that dies lets the lease run out);
2. if the projection is still stale, ask the ledger's API with no connection held
   (bounded: timeouts, a few jittered retries, a circuit breaker);
3. in one short transaction: repair the projection from what the ledger returned, then
   answer the loan's checks in arrival order from the repaired projection; a projection
   still stale (ledger down, breaker open, postings missing) is refused as
   ``projection_stale``, never confirmed. The workflow asks again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from collections_kit import contract as c
from collections_kit.clock import Clock
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from ledger_sync.adapters.ledger_api import LedgerApi
from ledger_sync.adapters.repository import PendingCheck
from ledger_sync.app.answers import stage_answer
from ledger_sync.app.ports import LedgerSyncUnitOfWork, StartUnitOfWork
from ledger_sync.app.refresh import (
    Fetch,
    Fetched,
    Unavailable,
    UnknownToLedger,
    apply_fetched,
    fetch,
)
from ledger_sync.domain.ledger import (
    CheckPolicy,
    Confirm,
    FreshnessPolicy,
    Refuse,
    answer_check,
    refuse_stale,
    staleness,
)
from ledger_sync.metrics import BALANCE_CHECK_FAILURES
from ledger_sync.settings import LedgerSyncSettings

log = logging.getLogger(__name__)


class StaleCheckResolver(RunsOnAPollingWorker):
    def __init__(
        self,
        *,
        settings: LedgerSyncSettings,
        uow: StartUnitOfWork,
        api: LedgerApi,
        clock: Clock,
        policy: CheckPolicy,
        freshness: FreshnessPolicy,
    ) -> None:
        self._settings = settings
        self._uow = uow
        self._api = api
        self._clock = clock
        self._policy = policy
        self._freshness = freshness
        # A few rounds of the API's concurrency per lease: a slow ledger then cannot keep a
        # batch past its lease (or this worker from beating) for long.
        self._batch = settings.ledger_api_concurrency * 4
        self._lease = timedelta(seconds=settings.pending_check_lease_s)
        self._gate = asyncio.Semaphore(settings.ledger_api_concurrency)
        self._enqueued = False
        # Any check leased means more may be waiting: the next round follows at once.
        self._worker = PollingWorker(
            "resolving waiting balance checks",
            self._resolve_round,
            interval_s=settings.pending_check_poll_s,
        )

    def note_enqueued(self) -> None:
        """A handler queued a check (its transaction has not committed yet)."""
        self._enqueued = True

    def after_commit(self) -> None:
        """The consumer committed a batch: wake up if it queued anything."""
        if self._enqueued:
            self._enqueued = False
            self._worker.wake()

    async def _resolve_round(self) -> bool:
        return await self.resolve_once() > 0

    async def resolve_once(self) -> int:
        """Lease, resolve and answer one batch of waiting checks; how many were leased."""
        async with self._uow() as uow:
            claimed = await uow.ledger.claim_pending(self._clock.now(), self._lease, self._batch)
            await uow.commit()
        by_loan: dict[str, list[PendingCheck]] = {}
        for check in claimed:
            by_loan.setdefault(check.loan_id, []).append(check)
        results = await asyncio.gather(
            *(self._resolve_loan(loan_id, checks) for loan_id, checks in by_loan.items()),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for error in failed:
            # That loan's checks keep their lease and are retried when it runs out.
            log.error("answering a waiting balance check failed", exc_info=error)
        if failed and len(failed) == len(results):
            raise failed[0]
        return len(claimed)

    async def _resolve_loan(self, loan_id: str, checks: Sequence[PendingCheck]) -> None:
        async with self._gate:
            async with self._uow() as uow:
                repo = uow.ledger
                projection = await repo.projection(loan_id)
                stale = staleness(
                    projection, await repo.has_gap(loan_id), self._clock.now(), self._freshness
                )
            # No connection held from here until the ledger has answered (or not).
            fetched: Fetch | None = (
                await fetch(self._api, loan_id, projection) if stale is not None else None
            )
            if isinstance(fetched, Unavailable):
                BALANCE_CHECK_FAILURES.labels("ledger_unavailable").inc(len(checks))
            async with self._uow() as uow:
                await self._answer(uow, loan_id, checks, fetched)
                await uow.commit()
            self._worker.beat()  # a loan answered: progress, however long the batch

    async def _answer(
        self,
        uow: LedgerSyncUnitOfWork,
        loan_id: str,
        checks: Sequence[PendingCheck],
        fetched: Fetch | None,
    ) -> None:
        tx, repo = uow.tx, uow.ledger
        if isinstance(fetched, Fetched):
            await apply_fetched(repo, loan_id, fetched, tx.now)
        projection = await repo.lock_projection(loan_id)
        has_gap = await repo.has_gap(loan_id)
        in_flight = await repo.money_in_flight(loan_id)
        stale = staleness(projection, has_gap, tx.now, self._freshness)
        for pending in await repo.take_pending([p.check_id for p in checks]):
            check = c.BalanceCheckRequested.model_validate(pending.payload)
            verdict: Confirm | Refuse
            if stale is None:
                verdict = answer_check(
                    projection,
                    has_gap,
                    in_flight,
                    check.expected_outstanding,
                    tx.now,
                    self._policy,
                    currency=check.currency,
                )
            elif isinstance(fetched, UnknownToLedger) and projection is None:
                verdict = Refuse("unknown_loan", "the ledger does not know this loan", 0)
            else:
                verdict = refuse_stale(
                    stale, _why(fetched), projection.watermark if projection else 0
                )
            await stage_answer(
                tx,
                repo,
                uow.cases,
                check,
                verdict,
                projection.currency if projection else None,
                path="after_ledger_api",
            )


def _why(fetched: Fetch | None) -> str:
    match fetched:
        case Fetched():
            return "the ledger's API did not close the gap"
        case UnknownToLedger():
            return "the ledger's API does not know the loan its feed posts for"
        case None:
            return "became stale while waiting"
        case _:
            return fetched.reason
