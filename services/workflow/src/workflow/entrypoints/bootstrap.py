"""Build the workflow service from its settings: the only place that wires adapters."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from collections_kit.clock import Clock, SystemClock
from collections_kit.consumer import ConsumerLoop
from collections_kit.contract import without_policy
from collections_kit.db import make_engine
from collections_kit.jurisdictions import known_jurisdictions
from collections_kit.outbox import OutboxRelay
from collections_kit.runtime import Runtime, make_app, make_producer
from collections_kit.topics import Topic
from workflow.adapters.placement_file import load_placement_policy
from workflow.adapters.policy_file import load_queue_policy, policy_book
from workflow.adapters.tables import inbox, outbox
from workflow.adapters.uow import SqlWorkflowUnitOfWork
from workflow.app.commands import Commands
from workflow.app.handlers import Workflow, WorkflowHandlers
from workflow.app.kpis import KpiGauges
from workflow.app.timers import TimerWorker
from workflow.app.work import LeaseSweeper, WorkQueues
from workflow.domain.policy import PolicyBook
from workflow.entrypoints import agencies, dead_letters, kpis, proposals, queues
from workflow.entrypoints.api import router
from workflow.settings import WorkflowSettings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
CONSUMED = (
    Topic.LOANS_OVERDUE,
    Topic.LOANS_REPAYMENT,
    Topic.LOANS_RISK_SIGNALS,
    Topic.BALANCE_CONFIRMATIONS,
    Topic.CONTACT_OUTCOMES,
)

DESCRIPTION = """Drives each delinquent loan (a *case*) through its collection stages.

Consumes overdue and repayment events, asks ledger-sync to confirm the balance before any
contact, and emits contact commands only on confirmation. Every step is on the case
timeline."""


def build_runtime(
    settings: WorkflowSettings, clock: Clock | None = None, policies: PolicyBook | None = None
) -> Runtime:
    clock = clock or SystemClock()
    engine = make_engine(
        settings.database_url, pool_size=settings.db_pool_size, schema=settings.db_schema
    )
    producer = make_producer(settings)
    relay = OutboxRelay(engine, settings.database_url, producer, outbox, settings.db_schema)
    placements = (
        load_placement_policy(settings.placement_policy_file)
        if settings.placement_policy_file
        else None
    )
    queue_policy = (
        load_queue_policy(settings.queue_policy_file)
        if settings.queue_policy_file
        else load_queue_policy()
    )
    workflow = Workflow(policies or policy_book(settings.policy_files), placements, queue_policy)
    # One transaction each: every read and write of the app layer goes through one.
    uow = partial(SqlWorkflowUnitOfWork, engine, settings, clock, outbox)
    timer_worker = TimerWorker(
        uow,
        clock,
        workflow,
        money_seen_retention=timedelta(hours=settings.money_seen_retention_hours),
        idempotency_key_retention=timedelta(hours=settings.idempotency_key_retention_hours),
    )
    work = WorkQueues(uow, workflow, queue_policy)
    handlers = WorkflowHandlers(workflow)
    # Recomputed from the timelines at an interval, never counted in memory (docs/measures.md).
    kpi_gauges = (
        [
            KpiGauges(
                uow,
                clock,
                window=timedelta(hours=settings.kpi_window_hours),
                every_s=settings.kpi_refresh_s,
            )
        ]
        if settings.kpi_refresh_s > 0
        else []
    )
    loop = ConsumerLoop(
        settings=settings,
        engine=engine,
        inbox=inbox,
        outbox=outbox,
        topics=[t.value for t in CONSUMED],
        handlers=handlers.routes(),
        # No wake after each batch: the timer worker looks at least every
        # second (sooner for an earlier timer), and escalation timers are
        # days away; two queries per committed batch were 3% of the ingest.
        clock=clock,
        batch_handler=handlers.batch,
        admit=without_policy(known_jurisdictions(settings.jurisdictions_dir)),
    )
    return Runtime(
        settings=settings,
        engine=engine,
        producer=producer,
        relay=relay,
        loops=[loop],
        # The sweeper returns leases that ran out as they do (timeline, queue depths).
        workers=[timer_worker, LeaseSweeper(work), *kpi_gauges],
        state={
            "clock": clock,
            "uow": uow,
            "commands": Commands(uow, workflow),
            "work": work,
            "agencies": placements.agencies() if placements else frozenset(),
        },
    )


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    return make_app(
        runtime,
        title="Collections workflow",
        version="1.0.0",
        description=DESCRIPTION,
        routers=[
            router,
            dead_letters.router,
            agencies.router,
            queues.router,
            proposals.router,
            kpis.router,
        ],
        manage_runtime=manage_runtime,
    )
