"""A client that goes away mid-request is no error: one info line, no traceback."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI, Request

from collections_kit import problems


async def test_a_client_gone_mid_body_is_logged_as_info_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    problems.install(app)

    # A route that reads its raw body itself (a signed callback does, to check the
    # signature over the exact bytes): FastAPI's own body parsing is not in between.
    @app.post("/callbacks")
    async def callback(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"half": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/callbacks",
        "raw_path": b"/callbacks",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("svc", 80),
    }
    caplog.set_level(logging.DEBUG)
    await app(scope, receive, send)  # the server would log whatever escapes as an error

    assert [r.levelno for r in caplog.records if r.name == "collections_kit.problems"] == [
        logging.INFO
    ]
    record = next(r for r in caplog.records if r.name == "collections_kit.problems")
    assert record.getMessage() == "client disconnected before the answer (POST /callbacks)"
    assert record.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
