"""Build the notifier from its settings: the only place that wires adapters."""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from collections_kit import contract as c
from collections_kit.clock import Clock, SystemClock
from collections_kit.consumer import ConsumerLoop, Handler
from collections_kit.db import make_engine
from collections_kit.jurisdictions import load_jurisdictions
from collections_kit.outbox import OutboxRelay
from collections_kit.runtime import Runtime, Worker, make_app, make_producer
from collections_kit.topics import Topic
from collections_kit.worker import PollingWorker
from notifier.adapters.email import SmtpChannel
from notifier.adapters.letters import PrintChannel
from notifier.adapters.provider_http import HttpProviderChannel
from notifier.adapters.recording import RecordingChannel
from notifier.adapters.repayment_log import KafkaRepaymentLog
from notifier.adapters.tables import inbox, outbox
from notifier.adapters.uow import SqlNotifierUnitOfWork
from notifier.app.dispatcher import Dispatcher, DispatcherConfig
from notifier.app.handlers import NotifierHandlers
from notifier.app.permits import PermitConfig, PermitService
from notifier.app.ports import Channel
from notifier.app.repayment_gate import RepaymentGate
from notifier.domain.in_doubt import in_doubt_rules_from_mapping
from notifier.domain.model import ChannelName
from notifier.domain.policy import DispatchPolicy, jurisdictions_from_mapping
from notifier.entrypoints import agencies, in_doubt, permits, receipts
from notifier.entrypoints.api import router
from notifier.settings import NotifierSettings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Two consumer loops in the service's one group: repayments have a loop of their own, so a
# repayment's cancellations never wait behind a poll of commands and case events (under
# load that wait was most of a repayment's way to the cancelled commands).
# Placements: which agency may read whose contact details (entrypoints/agencies.py).
CONTACT_TOPICS = (Topic.CONTACT_COMMANDS, Topic.CASE_EVENTS, Topic.PLACEMENTS)
REPAYMENT_TOPICS = (Topic.LOANS_REPAYMENT,)
# The balance checks and ledger confirmations (one of each per contact command): a loop of
# their own, so they never hold a poll of commands back. A permit rests on the freshest.
CONFIRMATION_TOPICS = (Topic.BALANCE_CHECKS, Topic.BALANCE_CONFIRMATIONS)
CONSUMED = CONTACT_TOPICS + REPAYMENT_TOPICS + CONFIRMATION_TOPICS

DESCRIPTION = """Turns the workflow's contact commands into lawful contacts, or into
recorded reasons why not.

Just before sending it checks again: workflow cancellations, holds and closures, the
ledger confirmation's validity, repayments the confirmation may not have seen, whether the
recipient is a party at this stage, opt-outs and do-not-contact, contact details, the
validation notice (Reg F), frequency caps and quiet periods, and the contact window in the
borrower's own time zone. Every decision is recorded with its reason and rule and published
as a contact outcome. Contact details and contact preferences arrive here by REST only; they
never travel on Kafka."""


def _client_lifetime(client: httpx.AsyncClient) -> PollingWorker:
    """Closes the provider's HTTP client when the runtime stops (a worker that only waits)."""

    async def nothing_to_do() -> bool:
        return False

    return PollingWorker(
        "provider client", nothing_to_do, interval_s=math.inf, on_stop=client.aclose
    )


def load_policy(settings: NotifierSettings) -> DispatchPolicy:
    """The jurisdictions of the jurisdiction files, plus (or overridden by) those of the
    policy file."""
    policy = DispatchPolicy.of(
        jurisdictions_from_mapping(load_jurisdictions(settings.jurisdictions_dir)),
        recheck_lookback=timedelta(seconds=settings.recheck_lookback_s),
    )
    if settings.policy_file is None:
        return policy
    with settings.policy_file.open("rb") as f:
        data = tomllib.load(f)
    policy = replace(policy, in_doubt=in_doubt_rules_from_mapping(data.get("in_doubt", {})))
    return policy.with_jurisdictions(jurisdictions_from_mapping(data.get("jurisdictions", {})))


def build_runtime(
    settings: NotifierSettings,
    clock: Clock | None = None,
    policy: DispatchPolicy | None = None,
    channels: dict[ChannelName, Channel] | None = None,
) -> Runtime:
    clock = clock or SystemClock()
    engine = make_engine(
        settings.database_url, pool_size=settings.db_pool_size, schema=settings.db_schema
    )
    producer = make_producer(settings)
    relay = OutboxRelay(engine, settings.database_url, producer, outbox, settings.db_schema)
    policy = policy or load_policy(settings)
    ring = settings.key_ring()
    # One transaction each: the dispatcher's passes and the REST writes go through one.
    uow = partial(SqlNotifierUnitOfWork, engine, settings, clock, outbox, ring=ring)
    workers: list[Worker] = []
    if channels is None:
        smtp = SmtpChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_sender,
            timeout_s=settings.smtp_timeout_s,
            username=settings.smtp_username,
            password=(
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            use_tls=settings.smtp_use_tls,
            start_tls=settings.smtp_start_tls,
        )
        phone: Channel = RecordingChannel(engine, clock, ring)
        if settings.provider_base_url:
            headers = (
                {"Authorization": "Bearer " + settings.provider_api_key.get_secret_value()}
                if settings.provider_api_key
                else {}
            )
            client = httpx.AsyncClient(
                base_url=settings.provider_base_url,
                headers=headers,
                timeout=settings.provider_timeout_s,
            )
            phone = HttpProviderChannel(
                client, max_tries=settings.provider_max_tries, backoff_s=settings.provider_backoff_s
            )
            workers.append(_client_lifetime(client))
        printer = PrintChannel(
            engine,
            clock,
            sender=settings.letter_sender,
            ring=ring,
            cjk_font=settings.letter_cjk_font,
        )
        channels = {"email": smtp, "sms": phone, "voice": phone, "letter": printer}
    # Every partition of the repayments topic, the whole group: see the gate's docstring.
    gate = RepaymentGate(
        KafkaRepaymentLog(settings, Topic.LOANS_REPAYMENT.value),
        max_lag_s=settings.repayment_gate_max_lag_ms / 1000,
        look_every_s=settings.repayment_gate_look_ms / 1000,
    )
    dispatcher = Dispatcher(
        uow=uow,
        policy=policy,
        channels=channels,
        clock=clock,
        gate=gate,
        config=DispatcherConfig(
            opt_out_url=settings.opt_out_url,
            collector_name=settings.collector_name,
            batch=settings.dispatch_batch,
            concurrency=settings.dispatch_concurrency,
            sending_lease=timedelta(seconds=settings.sending_lease_s),
            max_attempts=settings.send_max_attempts,
            retry_backoff=timedelta(seconds=settings.send_retry_backoff_s),
            safety_poll_s=settings.dispatch_safety_poll_s,
        ),
    )
    permit_service = PermitService(
        uow=uow,
        policy=policy,
        gate=gate,
        config=PermitConfig(
            ttl=timedelta(seconds=settings.permit_ttl_s),
            result_window=timedelta(seconds=settings.permit_result_window_s),
        ),
    )
    handlers = NotifierHandlers(policy)

    def loop(topics: tuple[Topic, ...], **options: Any) -> ConsumerLoop:
        """A consumer loop of the notifier's group on ``topics``, with their handlers."""
        return ConsumerLoop(
            settings=settings,
            engine=engine,
            inbox=inbox,
            outbox=outbox,
            topics=[t.value for t in topics],
            handlers=_routes_on(handlers.routes(), topics),
            clock=clock,
            **options,
        )

    contacts = loop(
        CONTACT_TOPICS,
        batch_handler=handlers.batch,
        on_committed=partial(_wake_for_new_commands, handlers, dispatcher),
    )
    repayments = loop(
        REPAYMENT_TOPICS,
        lane="repayments",
        fetch_min_bytes=settings.repayment_fetch_min_bytes,
        fetch_max_wait_ms=settings.repayment_fetch_max_wait_ms,
    )
    # A poll's checks and answers in one statement per kind (handlers.batch, as when they
    # travelled with the commands), not a statement per record.
    confirmations = loop(CONFIRMATION_TOPICS, lane="confirmations", batch_handler=handlers.batch)
    return Runtime(
        settings=settings,
        engine=engine,
        producer=producer,
        relay=relay,
        loops=[contacts, repayments, confirmations],
        workers=[dispatcher, gate, *workers],
        state={
            "clock": clock,
            "dispatcher": dispatcher,
            "permits": permit_service,
            "pii": ring,
            "policy": policy,
            "repayment_gate": gate,
            "uow": uow,
        },
    )


def _routes_on(
    routes: dict[type[c.Message], Handler], topics: tuple[Topic, ...]
) -> dict[type[c.Message], Handler]:
    """The handlers of the messages that travel on ``topics``."""
    return {
        model: handler
        for model, handler in routes.items()
        if c.SPEC_BY_MODEL[model].topic in topics
    }


def _wake_for_new_commands(handlers: NotifierHandlers, dispatcher: Dispatcher) -> None:
    if handlers.new_commands():
        dispatcher.wake()


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    return make_app(
        runtime,
        title="Collections notifier",
        version="1.0.0",
        description=DESCRIPTION,
        routers=[router, receipts.router, in_doubt.router, permits.router, agencies.router],
        manage_runtime=manage_runtime,
    )
