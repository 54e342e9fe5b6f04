"""Build ledger-sync from its settings: the only place that wires adapters."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from fastapi import FastAPI

from collections_kit.clock import Clock, SystemClock
from collections_kit.consumer import ConsumerLoop
from collections_kit.db import make_engine
from collections_kit.outbox import OutboxRelay
from collections_kit.runtime import Runtime, make_app, make_producer
from collections_kit.topics import Topic
from ledger_sync.adapters.tables import inbox, outbox
from ledger_sync.app.handlers import LedgerSyncHandlers
from ledger_sync.domain.ledger import CheckPolicy
from ledger_sync.entrypoints.api import router
from ledger_sync.settings import LedgerSyncSettings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
CONSUMED = (Topic.LEDGER_POSTINGS, Topic.LOANS_REPAYMENT, Topic.BALANCE_CHECKS)

DESCRIPTION = """Confirms, against the ledger, what is really still owed.

Projects the ledger's postings per loan (in sequence, gaps detected), counts repayments
seen but not yet booked, and answers the workflow's balance checks. No contact command is
ever issued without its confirmation."""


def build_runtime(settings: LedgerSyncSettings, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                         schema=settings.db_schema)
    producer = make_producer(settings)
    relay = OutboxRelay(engine, settings.database_url, producer, outbox, settings.db_schema)
    policy = CheckPolicy(tolerance=Decimal(settings.tolerance),
                         validity=timedelta(seconds=settings.confirmation_validity_s))
    loop = ConsumerLoop(settings=settings, engine=engine, inbox=inbox, outbox=outbox,
                        topics=[t.value for t in CONSUMED],
                        handlers=LedgerSyncHandlers(policy).routes(), clock=clock)
    return Runtime(settings=settings, engine=engine, producer=producer, relay=relay,
                   loops=[loop], state={"clock": clock})


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    return make_app(runtime, title="Collections ledger-sync", version="1.0.0",
                    description=DESCRIPTION, routers=[router], manage_runtime=manage_runtime)
