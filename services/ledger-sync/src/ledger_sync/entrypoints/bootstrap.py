"""Build ledger-sync from its settings: the only place that wires adapters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from collections_kit.clock import Clock, SystemClock
from collections_kit.consumer import ConsumerLoop
from collections_kit.db import make_engine
from collections_kit.outbox import OutboxRelay
from collections_kit.runtime import Runtime, Worker, make_app, make_producer
from collections_kit.topics import Topic
from ledger_sync.adapters.breaker import CircuitBreaker
from ledger_sync.adapters.ledger_api import HttpLedgerApi, LedgerApiConfig
from ledger_sync.adapters.tables import inbox, outbox
from ledger_sync.adapters.uow import ReconciliationLock, SqlLedgerSyncUnitOfWork
from ledger_sync.app.handlers import MONEY_FACTS, LedgerSyncHandlers
from ledger_sync.app.reconciliation import Reconciler
from ledger_sync.app.verifier import StaleCheckResolver
from ledger_sync.domain.ledger import CheckPolicy, FreshnessPolicy
from ledger_sync.entrypoints.api import router
from ledger_sync.settings import LedgerSyncSettings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
CONSUMED = (Topic.LEDGER_POSTINGS, Topic.LOANS_REPAYMENT, Topic.BALANCE_CHECKS, Topic.CASE_EVENTS)

DESCRIPTION = """Confirms, against the ledger, what is really still owed.

Projects the ledger's postings per loan (in sequence, gaps detected), counts repayments
seen but not yet booked, and answers the workflow's balance checks. When the projection is
stale (no postings seen, a gap, or older than the configured age) it asks the ledger's own
HTTP API and never confirms on stale data. A scheduled reconciliation compares the open
cases with the ledger and publishes corrections. No contact command is ever issued without
its confirmation."""


@dataclass
class LedgerSyncRuntime(Runtime):
    """The kit's runtime plus the ledger API client, closed when the runtime stops."""

    ledger_api: HttpLedgerApi | None = None

    async def stop(self) -> None:
        await super().stop()
        if self.ledger_api is not None:
            await self.ledger_api.aclose()


def build_ledger_api(settings: LedgerSyncSettings) -> HttpLedgerApi | None:
    if settings.ledger_api_url is None:
        return None
    return HttpLedgerApi(
        LedgerApiConfig(
            base_url=settings.ledger_api_url,
            connect_timeout_s=settings.ledger_api_connect_timeout_s,
            read_timeout_s=settings.ledger_api_read_timeout_s,
            attempts=settings.ledger_api_attempts,
            backoff_s=settings.ledger_api_backoff_s,
        ),
        CircuitBreaker(
            failure_threshold=settings.ledger_api_breaker_failures,
            reset_after_s=settings.ledger_api_breaker_reset_s,
        ),
    )


def build_runtime(settings: LedgerSyncSettings, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    engine = make_engine(
        settings.database_url, pool_size=settings.db_pool_size, schema=settings.db_schema
    )
    producer = make_producer(settings)
    relay = OutboxRelay(engine, settings.database_url, producer, outbox, settings.db_schema)
    policy = CheckPolicy(
        tolerance=Decimal(settings.tolerance),
        validity=timedelta(seconds=settings.confirmation_validity_s),
    )
    freshness = FreshnessPolicy(
        max_age=None
        if settings.projection_max_age_s is None
        else timedelta(seconds=settings.projection_max_age_s)
    )
    api = build_ledger_api(settings)
    # One transaction each: the background work reads and writes through one.
    uow = partial(SqlLedgerSyncUnitOfWork, engine, settings, clock, outbox)
    workers: list[Worker] = []
    resolver = None
    if api is not None:
        resolver = StaleCheckResolver(
            settings=settings,
            uow=uow,
            api=api,
            clock=clock,
            policy=policy,
            freshness=freshness,
        )
        workers.append(resolver)
    reconciler = None
    if settings.reconciliation_interval_s > 0:
        reconciler = Reconciler(
            settings=settings,
            uow=uow,
            lock=ReconciliationLock(engine),
            api=api,
            clock=clock,
            policy=policy,
            freshness=freshness,
        )
        workers.append(reconciler)
    handlers = LedgerSyncHandlers(
        policy,
        freshness,
        ledger_api=api is not None,
        on_enqueued=resolver.note_enqueued if resolver else None,
    )
    loop = ConsumerLoop(
        settings=settings,
        engine=engine,
        inbox=inbox,
        outbox=outbox,
        topics=[t.value for t in CONSUMED],
        handlers=handlers.routes(),
        batch_handler=handlers.batch,
        applied_first=MONEY_FACTS,
        clock=clock,
        on_committed=resolver.after_commit if resolver else None,
    )
    return LedgerSyncRuntime(
        settings=settings,
        engine=engine,
        producer=producer,
        relay=relay,
        loops=[loop],
        workers=workers,
        ledger_api=api,
        state={
            "clock": clock,
            "freshness": freshness,
            "resolver": resolver,
            "reconciler": reconciler,
            "ledger_api": api,
            "uow": uow,
        },
    )


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    return make_app(
        runtime,
        title="Collections ledger-sync",
        version="1.0.0",
        description=DESCRIPTION,
        routers=[router],
        manage_runtime=manage_runtime,
    )
