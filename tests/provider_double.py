"""A real HTTP SMS/voice provider on loopback, for tests and demos (not product code).

It speaks the API the notifier's ``HttpProviderChannel`` calls:

- ``POST /v1/messages`` ``{"to", "text", "reference", "language"}`` -> 201 ``{"id", "status"}``
  (status ``delivered`` unless scripted otherwise);
- ``POST /v1/calls`` ``{"to", "script", "reference", "language"}`` -> 201 ``{"id", "status"}``
  (status ``answered`` unless scripted otherwise);
- ``GET /v1/messages/by-reference/{key}`` (``/v1/calls/...``) -> 200 ``{"id", "status"}``
  of the message sent under that idempotency key, or 404 if none was: how the notifier
  settles an attempt a crash left unknown without sending again;
- ``Idempotency-Key`` is required. A key seen before is answered with the first answer
  (header ``Idempotent-Replayed: true``) and sends nothing; a key still being handled gets
  409. So :attr:`ProviderDouble.sends` counts real sends per key: more than one would be a
  double send.

Scripting, in code (:meth:`ProviderDouble.script`) or over HTTP
(``POST /_double/script {"outcomes": [...], "to": optional number}``): each new request
takes the next outcome of its number's queue, else of the general one:

- ``delivered``, ``accepted``, ``answered``, ``unanswered``: send, answer with that status;
- ``fail:<code>``: send nothing, answer ``<code>`` (the key is not kept: a retry sends);
- ``lost:<code>``: send, keep the answer for the key, but answer ``<code>`` this time, as if
  the response were lost on the way (a retry with the key gets the kept answer);
- ``slow:<seconds>``: wait, then send as by default.

``GET /_double/sends`` lists what was sent (key, kind, status; numbers masked), and
``POST /_double/reset`` forgets everything. Run it alone with
``python -m tests.provider_double --port 8091``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class Sent:
    key: str
    kind: str  # "sms" | "voice"
    to: str
    text: str
    status: str
    provider_id: str


@dataclass
class ProviderDouble:
    host: str = "127.0.0.1"
    port: int = 0
    default_sms: str = "delivered"
    default_call: str = "answered"
    sends: dict[str, list[Sent]] = field(default_factory=lambda: defaultdict(list))
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # key, kind, replayed
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _in_progress: set[str] = field(default_factory=set)
    _queues: dict[str | None, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _counter: int = 0

    # --- control --------------------------------------------------------------------------

    def script(self, outcomes: list[str], to: str | None = None) -> None:
        with self._lock:
            self._queues[to].extend(outcomes)

    def reset(self) -> None:
        with self._lock:
            self.sends.clear()
            self.requests.clear()
            self._answers.clear()
            self._queues.clear()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def sent_keys(self) -> list[str]:
        with self._lock:
            return [key for key, sent in self.sends.items() for _ in sent]

    def doubled(self) -> dict[str, int]:
        """Keys sent more than once: must always be empty."""
        with self._lock:
            return {key: len(sent) for key, sent in self.sends.items() if len(sent) > 1}

    def posted_again(self) -> dict[str, int]:
        """Keys posted again after the double had sent under them, by how many times it was
        posted in all. The double dedupes, a provider may not (or not for long): each is a
        contact sent twice as far as the notifier is concerned. A retry of a request whose
        answer was lost is counted too; a chaos run scripts none."""
        with self._lock:
            posted: dict[str, int] = defaultdict(int)
            again: set[str] = set()
            for key, _, replayed in self.requests:
                posted[key] += 1
                if replayed:
                    again.add(key)
            return {key: posted[key] for key in again}

    # --- the API ----------------------------------------------------------------------------

    def _next_outcome(self, to: str, kind: str) -> str:
        with self._lock:
            for queue_key in (to, None):
                queue = self._queues.get(queue_key)
                if queue:
                    return queue.popleft()
        return self.default_sms if kind == "sms" else self.default_call

    async def _handle(self, request: Request, kind: str) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        if not key:
            return JSONResponse({"error": "Idempotency-Key required"}, status_code=400)
        body = await request.json()
        text_field = "text" if kind == "sms" else "script"
        to, text = body.get("to"), body.get(text_field)
        if not isinstance(to, str) or not isinstance(text, str) or not to.startswith("+"):
            return JSONResponse({"error": f"'to' and '{text_field}' required"}, status_code=422)
        with self._lock:
            if key in self._answers:
                self.requests.append((key, kind, True))
                code, payload = self._answers[key]
                return JSONResponse(
                    payload, status_code=code, headers={"Idempotent-Replayed": "true"}
                )
            if key in self._in_progress:
                self.requests.append((key, kind, False))
                return JSONResponse({"error": "request with this key in progress"}, status_code=409)
            self._in_progress.add(key)
            self.requests.append((key, kind, False))
        try:
            outcome = self._next_outcome(to, kind)
            if outcome.startswith("slow:"):
                await asyncio.sleep(float(outcome.split(":", 1)[1]))
                outcome = self.default_sms if kind == "sms" else self.default_call
            if outcome.startswith("fail:"):
                return JSONResponse(
                    {"error": "scripted failure"}, status_code=int(outcome.split(":", 1)[1])
                )
            lost_code = int(outcome.split(":", 1)[1]) if outcome.startswith("lost:") else None
            status = (
                (self.default_sms if kind == "sms" else self.default_call) if lost_code else outcome
            )
            with self._lock:
                self._counter += 1
                provider_id = f"{'msg' if kind == 'sms' else 'call'}_{self._counter:06d}"
                self.sends[key].append(Sent(key, kind, to, text, status, provider_id))
                payload = {"id": provider_id, "status": status}
                self._answers[key] = (201, payload)
            if lost_code is not None:
                return JSONResponse({"error": "scripted lost response"}, status_code=lost_code)
            return JSONResponse(payload, status_code=201)
        finally:
            with self._lock:
                self._in_progress.discard(key)

    async def _messages(self, request: Request) -> JSONResponse:
        return await self._handle(request, "sms")

    async def _calls(self, request: Request) -> JSONResponse:
        return await self._handle(request, "voice")

    async def _by_reference(self, request: Request) -> JSONResponse:
        kind = "sms" if request.url.path.startswith("/v1/messages/") else "voice"
        key = request.path_params["key"]
        with self._lock:
            sent = [s for s in self.sends.get(key, ()) if s.kind == kind]
        if not sent:
            return JSONResponse({"error": "no message with this reference"}, status_code=404)
        return JSONResponse({"id": sent[0].provider_id, "status": sent[0].status})

    async def _script(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.script(list(body.get("outcomes", [])), body.get("to"))
        return JSONResponse({"ok": True})

    async def _list(self, _request: Request) -> JSONResponse:
        with self._lock:
            rows = [
                {
                    "key": s.key,
                    "kind": s.kind,
                    "to": s.to[:3] + "***" + s.to[-2:],
                    "status": s.status,
                    "id": s.provider_id,
                }
                for sent in self.sends.values()
                for s in sent
            ]
            replays = sum(1 for _, _, replayed in self.requests if replayed)
        return JSONResponse({"sends": rows, "requests": len(self.requests), "replays": replays})

    async def _reset(self, _request: Request) -> JSONResponse:
        self.reset()
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/calls", self._calls, methods=["POST"]),
                Route("/v1/messages/by-reference/{key}", self._by_reference, methods=["GET"]),
                Route("/v1/calls/by-reference/{key}", self._by_reference, methods=["GET"]),
                Route("/_double/script", self._script, methods=["POST"]),
                Route("/_double/sends", self._list, methods=["GET"]),
                Route("/_double/reset", self._reset, methods=["POST"]),
            ]
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> ProviderDouble:
        """Serve on a thread of its own (its own event loop), so a test's loop never
        blocks it; returns once it accepts connections."""
        config = uvicorn.Config(
            self.app(),
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="provider-double", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("provider double did not start")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    double = ProviderDouble(host=args.host, port=args.port)
    uvicorn.run(double.app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
