"""Every route of every service, except the probes and metrics, refuses a caller without a
valid token, and its OpenAPI operation names the scope it needs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from collections_kit.auth import SCOPES, dev_headers, dev_token

OPEN = {"/livez", "/readyz", "/metrics"}
# Called by a provider, which signs the body instead (notifier.entrypoints.receipts).
SIGNED = {"/v1/delivery-receipts/{provider}"}


async def _apps() -> AsyncIterator[tuple[str, FastAPI]]:
    from ledger_sync.entrypoints import bootstrap as ledger_sync
    from ledger_sync.settings import LedgerSyncSettings
    from notifier.entrypoints import bootstrap as notifier
    from notifier.settings import NotifierSettings
    from workflow.entrypoints import bootstrap as workflow
    from workflow.settings import WorkflowSettings

    for name, module, settings in (
        ("workflow", workflow, WorkflowSettings()),
        ("ledger-sync", ledger_sync, LedgerSyncSettings()),
        ("notifier", notifier, NotifierSettings()),
    ):
        runtime = module.build_runtime(settings)
        try:
            yield name, module.create_app(runtime, manage_runtime=False)
        finally:
            await runtime.producer.stop()
            await runtime.engine.dispose()


def _operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
    ]


async def _routes() -> AsyncIterator[tuple[str, httpx.AsyncClient, str, str, dict[str, Any]]]:
    """Every operation of every service that needs a token, with a client for its app;
    the open ones (probes, metrics) must declare no security at all."""
    async for name, app in _apps():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"
        ) as http:
            for method, path, op in _operations(app):
                if path in OPEN:
                    assert "security" not in op
                    continue
                if path in SIGNED:
                    assert op["security"] == [{"providerSignature": []}], (name, path)
                    continue
                yield name, http, method, path, op


async def _call(
    http: httpx.AsyncClient, method: str, path: str, op: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """The operation with placeholder path parameters and, if it takes one, an empty body:
    authentication comes before any of them is looked at."""
    url = re.sub(r"\{[^}]+\}", "X-1", path)
    return await http.request(
        method, url, headers=headers, json={} if "requestBody" in op else None
    )


@pytest.mark.parametrize("token", ["none", "expired", "wrong audience", "garbage"])
async def test_no_route_answers_without_a_valid_token(token: str) -> None:
    headers = {
        "none": {},
        "expired": {"Authorization": f"Bearer {dev_token(now=0)}"},
        "wrong audience": {"Authorization": f"Bearer {dev_token(audience='someone-else')}"},
        "garbage": {"Authorization": "Bearer abc.def.ghi"},
    }[token]
    checked = 0
    async for name, http, method, path, op in _routes():
        # One scope per requirement; several requirements are alternatives (require_any).
        assert op["security"], (name, path)
        for req in op["security"]:
            assert len(req["oauth2"]) == 1, (name, path, op["security"])
            assert req["oauth2"][0] in SCOPES, (name, path, op["security"])
        response = await _call(http, method, path, op, headers)
        assert response.status_code == 401, (name, method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer ")
        checked += 1
    assert checked >= 20


async def test_a_signed_route_refuses_an_unsigned_call_even_with_every_scope() -> None:
    checked = 0
    async for name, app in _apps():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"
        ) as http:
            for method, path, op in _operations(app):
                if path not in SIGNED:
                    continue
                for headers in (
                    {},
                    dev_headers(list(SCOPES)),
                    {"X-Signature": "sha256=" + "0" * 64},
                ):
                    response = await _call(http, method, path, op, headers)
                    assert response.status_code == 401, (path, response.text)
                    assert response.headers["content-type"] == "application/problem+json"
                checked += 1
    assert checked == len(SIGNED)


async def test_no_route_answers_a_token_without_its_scope() -> None:
    """Every other scope is not enough: each route refuses with problem+json 403 and names
    the scope it needs (or, for a route with alternatives, every one it accepts). Holding
    ``admin`` does not imply the others."""
    checked = 0
    async for name, http, method, path, op in _routes():
        accepted = [s for req in op["security"] for s in req["oauth2"]]
        needed = " ".join(accepted)
        others = [s for s in SCOPES if s not in accepted]
        headers = {"Authorization": f"Bearer {dev_token(others)}"}
        response = await _call(http, method, path, op, headers)
        assert response.status_code == 403, (name, method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert f'scope="{needed}"' in response.headers["www-authenticate"], (
            name,
            path,
            response.headers["www-authenticate"],
        )
        checked += 1
    assert checked >= 20
