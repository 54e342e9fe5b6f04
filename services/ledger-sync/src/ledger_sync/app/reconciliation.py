"""The scheduled reconciliation pass: open cases against the ledger, drift corrected by events.

One replica runs a pass at a time: the pass holds a session-level advisory lock on a
connection of its own (idle between statements, never an open transaction), so a replica
that dies releases it with its connection. A replica whose tick finds that another ran a
pass less than an interval ago skips its turn, so N replicas do not mean N passes.

A pass walks the open cases in pages (keyset on loan id). Per page: the stale projections
are refreshed from the ledger's API with no transaction open; then one short transaction
compares each case (``domain.reconciliation.reconcile``), stages the corrections in the
outbox and writes the page's findings to the run's report. A crash loses at most the page
in progress, and the next pass redoes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import timedelta
from typing import Literal

from collections_kit import contract as c
from collections_kit.clock import Clock, derived_id, new_id
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from ledger_sync.adapters.ledger_api import LedgerApi
from ledger_sync.app.ports import PassLock, StartUnitOfWork
from ledger_sync.app.refresh import Fetched, UnknownToLedger, apply_fetched, fetch
from ledger_sync.domain.ledger import CheckPolicy, FreshnessPolicy, Projection, staleness
from ledger_sync.domain.reconciliation import Finding, OpenCase, reconcile
from ledger_sync.metrics import RECONCILIATION_FINDINGS, RECONCILIATION_LAST_COMPLETED
from ledger_sync.settings import LedgerSyncSettings

log = logging.getLogger(__name__)


class Reconciler(RunsOnAPollingWorker):
    def __init__(
        self,
        *,
        settings: LedgerSyncSettings,
        uow: StartUnitOfWork,
        lock: PassLock,
        api: LedgerApi | None,
        clock: Clock,
        policy: CheckPolicy,
        freshness: FreshnessPolicy,
    ) -> None:
        self._settings = settings
        self._uow = uow
        self._lock = lock
        self._api = api
        self._clock = clock
        self._policy = policy
        self._freshness = freshness
        self._interval = timedelta(seconds=settings.reconciliation_interval_s)
        # A pass every interval, the first one interval after the start. A failed pass is
        # retried after the worker's backoff: one that had started its run finds it recent
        # and waits for the next interval (the run stays "running" until a pass abandons it).
        self._worker = PollingWorker(
            "reconciliation pass",
            self._pass_round,
            interval_s=settings.reconciliation_interval_s,
            idle_first=True,
        )

    async def _pass_round(self) -> bool:
        await self.run_pass()
        return False

    async def run_pass(self) -> str | None:
        """One pass over every open case; the run id, or None if it was not this replica's
        turn."""
        async with self._lock() as got:
            if not got:
                return None
            return await self._locked_pass()

    async def _locked_pass(self) -> str | None:
        now = self._clock.now()
        async with self._uow() as uow:
            last = await uow.runs.last_started()
            if last is not None and now - last < self._interval * 0.9:
                return None  # another replica's pass is recent enough
            await uow.runs.abandon_running()
            run_id = new_id()
            await uow.runs.start(run_id, now)
            await uow.commit()
        log.info("reconciliation pass started", extra={"run_id": run_id})
        counts: Counter[str] = Counter()
        examined, after = 0, ""
        while True:
            async with self._uow() as uow:
                page = await uow.cases.open_cases_page(after, self._settings.reconciliation_batch)
            if not page:
                break
            why = await self._refresh_stale(page)
            await self._reconcile_page(run_id, page, why, counts)
            examined += len(page)
            after = page[-1].loan_id
            self._worker.beat()  # a page done
        async with self._uow() as uow:
            await uow.runs.progress(run_id, examined, dict(counts), finished_at=self._clock.now())
            await uow.commit()
        RECONCILIATION_LAST_COMPLETED.set_to_current_time()
        log.info(
            "reconciliation pass finished",
            extra={
                "run_id": run_id,
                "examined": examined,
                **{f"n_{k}": v for k, v in counts.items()},
            },
        )
        return run_id

    async def _refresh_stale(self, page: list[OpenCase]) -> dict[str, str]:
        """Refresh the page's stale projections from the ledger; why each failed one failed."""
        why: dict[str, str] = {}
        async with self._uow() as uow:
            repo = uow.ledger
            stale: list[tuple[str, Projection | None]] = []
            for case in page:
                projection = await repo.projection(case.loan_id)
                if (
                    staleness(
                        projection,
                        await repo.has_gap(case.loan_id),
                        self._clock.now(),
                        self._freshness,
                    )
                    is not None
                ):
                    stale.append((case.loan_id, projection))
        api = self._api
        if api is None:
            return {loan_id: "no ledger API configured" for loan_id, _ in stale}
        gate = asyncio.Semaphore(self._settings.ledger_api_concurrency)

        async def refresh(loan_id: str, projection: Projection | None) -> None:
            async with gate:
                fetched = await fetch(api, loan_id, projection)
                if isinstance(fetched, Fetched):
                    async with self._uow() as uow:
                        await apply_fetched(uow.ledger, loan_id, fetched, self._clock.now())
                        await uow.commit()
                    # Only read if the refresh left the projection stale.
                    why[loan_id] = "the ledger's API did not close the gap"
                elif isinstance(fetched, UnknownToLedger):
                    why[loan_id] = "the ledger does not know this loan"
                else:
                    why[loan_id] = fetched.reason
                self._worker.beat()  # a loan refreshed

        await asyncio.gather(*(refresh(loan_id, projection) for loan_id, projection in stale))
        return why

    async def _reconcile_page(
        self, run_id: str, page: list[OpenCase], why: dict[str, str], counts: Counter[str]
    ) -> None:
        async with self._uow() as uow:
            tx, ledger, cases = uow.tx, uow.ledger, uow.cases
            report: list[tuple[OpenCase, Finding, str | None]] = []
            for case in page:
                projection = await ledger.projection(case.loan_id)
                stale = staleness(
                    projection, await ledger.has_gap(case.loan_id), tx.now, self._freshness
                )
                finding = reconcile(
                    case,
                    projection,
                    await ledger.money_in_flight(case.loan_id),
                    stale,
                    why.get(case.loan_id, ""),
                    self._policy,
                )
                event_id = None
                if finding.publish:
                    assert finding.outstanding is not None
                    assert finding.currency is not None
                    kind: Literal["nothing_owed", "drift"] = (
                        "nothing_owed" if finding.kind == "nothing_owed" else "drift"
                    )
                    event_id = derived_id(run_id, f"correction/{case.loan_id}")
                    tx.publish(
                        c.BalanceCorrected(
                            loan_id=case.loan_id,
                            kind=kind,
                            currency=finding.currency,
                            ledger_outstanding=finding.outstanding,
                            ledger_watermark=finding.watermark,
                            corrected_at=tx.now,
                        ),
                        event_id=event_id,
                        subject=case.loan_id,
                    )
                    await cases.note_correction(
                        case.loan_id, finding.kind, finding.outstanding, finding.watermark
                    )
                    await cases.set_view(
                        case.loan_id, finding.currency, finding.outstanding, "correction", tx.now
                    )
                    counts["published"] += 1
                counts[finding.kind] += 1
                RECONCILIATION_FINDINGS.labels(
                    finding.kind, str(event_id is not None).lower()
                ).inc()
                report.append((case, finding, event_id))
            await uow.runs.record(run_id, report)
            await uow.runs.progress(
                run_id,
                sum(counts[k] for k in ("in_sync", "nothing_owed", "drift", "skipped")),
                dict(counts),
            )
            await uow.commit()
