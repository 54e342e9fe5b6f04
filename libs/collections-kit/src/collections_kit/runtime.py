"""The one shape every service runs in.

A service's bootstrap builds a :class:`Runtime` (engine, producer, outbox relay, consumer
loops, other workers such as timers) from its settings; :func:`make_app` wraps it in a
FastAPI app whose lifespan starts and stops it, and adds ``/livez``, ``/readyz`` and
``/metrics``. Nothing here is built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import uvicorn
import uvloop
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit import problems, tracing
from collections_kit.auth import TokenVerifier, alternative_scopes, refusal_before_input
from collections_kit.consumer import ConsumerLoop
from collections_kit.inbox_retention import InboxPruner
from collections_kit.kafka import client_kwargs
from collections_kit.limits import BodySizeLimit, EmptyQueryValuesAbsent
from collections_kit.outbox import OutboxRelay
from collections_kit.settings import ServiceSettings
from collections_kit.text import GUARD as STORABLE_TEXT

log = logging.getLogger(__name__)


class Worker(Protocol):
    """A background loop: runs until ``stop`` is set and beats while it makes progress
    (most are a ``collections_kit.worker.PollingWorker``, or delegate to one)."""

    @property
    def heartbeat(self) -> float: ...

    def run(self, stop: asyncio.Event) -> Coroutine[Any, Any, None]: ...


# A loop that has not beaten for this long is stuck: liveness fails and the pod restarts.
STALL_AFTER_S = 60.0
# gc thresholds for a service process (gen0 allocations, gen1 and gen2 collection ratios).
GC_THRESHOLDS = (20_000, 50, 100)


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(settings),
        client_id=f"{settings.service_name}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


@dataclass
class Runtime:
    settings: ServiceSettings
    engine: AsyncEngine
    producer: AIOKafkaProducer
    relay: OutboxRelay
    loops: Sequence[ConsumerLoop]
    workers: Sequence[Worker] = ()
    # Extra state a service's routes need (its repositories, clock...).
    state: dict[str, Any] = field(default_factory=dict)
    on_fatal: Callable[[], None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    failed: bool = False
    # Every service's inbox is pruned the same way, so no bootstrap has to remember it.
    inbox_pruner: InboxPruner = field(init=False)

    def __post_init__(self) -> None:
        self.inbox_pruner = InboxPruner(
            self.engine, self.settings.db_schema, self.settings.inbox_retention_days
        )

    async def start(self) -> None:
        await self.producer.start()
        self._stop.clear()
        for name, worker in self._named_workers():
            task = asyncio.create_task(worker.run(self._stop), name=name)
            task.add_done_callback(self._on_done)
            self._tasks.append(task)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stop.is_set():
            return
        # A background loop must never end on its own: crash loudly so it is restarted.
        self.failed = True
        log.error(
            "background task %s ended unexpectedly", task.get_name(), exc_info=task.exception()
        )
        if self.on_fatal is not None:
            self.on_fatal()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        await self.producer.stop()
        await self.engine.dispose()

    def _named_workers(self) -> list[tuple[str, Worker]]:
        named: list[tuple[str, Worker]] = [("relay", self.relay), ("inbox", self.inbox_pruner)]
        named += [(f"consumer-{i}", loop) for i, loop in enumerate(self.loops)]
        named += [(f"worker-{i}", w) for i, w in enumerate(self.workers)]
        return named

    def held(self) -> list[str]:
        """What workers hold back right now, and why (a worker may say so through a
        ``held() -> str | None`` method: the notifier's dispatch while its view of
        repayments lags)."""
        notes = []
        for _, worker in self._named_workers():
            why = getattr(worker, "held", None)
            note = why() if callable(why) else None
            if note:
                notes.append(str(note))
        return notes

    def live(self) -> bool:
        if self.failed:
            return False
        now = time.monotonic()
        return all(now - w.heartbeat < STALL_AFTER_S for _, w in self._named_workers())

    async def ready(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await asyncio.wait_for(self.producer.client.force_metadata_update(), timeout=2.0)
        except Exception:
            return False
        return True


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.runtime.engine
    return engine


# Route dependency: the service's engine, from the runtime the app was built with.
EngineDep = Annotated[AsyncEngine, Depends(_engine)]


def make_app(
    runtime: Runtime,
    *,
    title: str,
    version: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    manage_runtime: bool = True,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    # Production serves no interactive docs or schema: they would be the only routes
    # without a token. The contract is published in contracts/openapi/ instead.
    hidden: dict[str, Any] = (
        {"docs_url": None, "redoc_url": None, "openapi_url": None}
        if runtime.settings.environment == "prod"
        else {}
    )
    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        telemetry=tracing.HTTP_TELEMETRY,
        dependencies=[STORABLE_TEXT],
        **hidden,
    )
    app.state.runtime = runtime
    # Every route but the three below needs a bearer token (collections_kit.auth.require).
    app.state.verifier = TokenVerifier(runtime.settings)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_request_bytes)
    app.add_middleware(EmptyQueryValuesAbsent)
    problems.install(app, refusal_before_input=refusal_before_input)
    ops = APIRouter(tags=["operations"])

    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    @ops.get(
        "/livez",
        summary="Liveness: the consumer loops and relay are beating",
        response_class=PlainTextResponse,
        responses={
            200: {"description": "Beating", **text},
            503: {"description": "A loop is stalled or died", **text},
        },
    )
    async def livez() -> Response:
        ok = runtime.live()
        return Response(
            "ok" if ok else "stalled", status_code=200 if ok else 503, media_type="text/plain"
        )

    @ops.get(
        "/readyz",
        summary="Readiness: PostgreSQL and Kafka answer",
        response_class=PlainTextResponse,
        responses={
            200: {"description": "Ready", **text},
            503: {"description": "PostgreSQL or Kafka does not answer", **text},
        },
    )
    async def readyz() -> Response:
        ok = await runtime.ready()
        # Held work is shown, not answered with 503: a hold (the notifier's, while
        # repayments lag) applies to every replica at once, and the REST API (opt-outs,
        # do-not-contact) must stay reachable exactly then.
        body = "; ".join(["ready" if ok else "not ready", *runtime.held()])
        return Response(body, status_code=200 if ok else 503, media_type="text/plain")

    @ops.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text format", **text}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(ops)
    for router in routers:
        app.include_router(router)
    _document_refusals(app, routers)
    return app


_EMPTY = {"type": "string", "maxLength": 0, "description": "Left empty: as if absent."}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the ``{"type": "null"}`` branch pydantic gives ``str | None``."""
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) != 1 or len(branches) == len(schema.get("anyOf", ())):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**branches[0], **rest}


def _document_refusals(app: FastAPI, routers: Sequence[APIRouter] = ()) -> None:
    """Every operation that needs a token answers 401 and 403; one with a body, 400
    (not even JSON) and 413; an optional query parameter may be left empty."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                if operation.get("security"):
                    for status, response in problems.AUTH_RESPONSES.items():
                        responses.setdefault(status, response)
                if "requestBody" in operation:
                    responses.setdefault("400", problems.MALFORMED_BODY_RESPONSE)
                    responses.setdefault("413", problems.TOO_LARGE_RESPONSE)
                for parameter in operation.get("parameters", ()):
                    if parameter.get("in") == "header":
                        # A header is text or absent, never JSON null: an optional one's
                        # null branch let clients (and fuzzers) send "null" as its value.
                        parameter["schema"] = _without_null(parameter["schema"])
                    if parameter.get("in") == "query" and not parameter.get("required"):
                        # EmptyQueryValuesAbsent: `?stage=` is as if no stage was given.
                        parameter["schema"] = {"anyOf": [parameter["schema"], _EMPTY]}
        for route in (r for router in routers for r in router.routes):
            scopes = alternative_scopes(route)
            for method in getattr(route, "methods", ()) if scopes else ():
                operation = schema["paths"][getattr(route, "path_format", "")][method.lower()]
                # Any one scope is enough: one requirement each (OpenAPI's "or").
                operation["security"] = [{"oauth2": [scope]} for scope in scopes or ()]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(build_app: Callable[[], FastAPI], settings: ServiceSettings) -> int:
    """Run the service until SIGTERM; exit non-zero if a background loop died.

    The app is built inside the event loop because the Kafka clients bind to the running
    loop when they are created.
    """
    failed = False

    async def main() -> None:
        nonlocal failed
        app = build_app()
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        runtime: Runtime = app.state.runtime

        def fatal() -> None:
            server.should_exit = True

        runtime.on_fatal = fatal
        # Everything built so far (app, policies, SQLAlchemy's metadata and caches) lives as
        # long as the process: moved out of the collector's view, and the youngest generation
        # collected less often. A batch allocates tens of thousands of short-lived objects;
        # with the default thresholds the collections that walk the long-lived heap cost
        # a consumer about a sixth of its throughput (measured with bench/run.py ingest).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        await server.serve()
        failed = runtime.failed

    # uvloop: the event loop in C (libuv), from asyncpg's authors. Every consumer spends a
    # fifth of its time in the loop's socket reads, writes and selects; with uvloop a
    # 20,000-loan pipeline took about a tenth less CPU per loan in the services.
    uvloop.run(main())
    return 1 if failed else 0
