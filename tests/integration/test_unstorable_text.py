"""Every text input of every route of every service, walked from its OpenAPI document: a
NUL (which a PostgreSQL ``text`` column cannot hold) in a path or query parameter or in any
string of a JSON body is a 422 problem naming the field, never a 500 from the database."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import FastAPI

from collections_kit.auth import SCOPES, dev_headers

OPEN = {"/livez", "/readyz", "/metrics"}
SIGNED = {"/v1/delivery-receipts/{provider}"}  # signed by a provider, not a bearer token
NUL = "a\x00b"
EVERYTHING = dev_headers(sorted(SCOPES), subject="nul-walker")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_text(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolve(doc, schema)
    options = schema.get("anyOf", []) or schema.get("oneOf", []) or [schema]
    return any(_resolve(doc, o).get("type") == "string" for o in options)


def _text_fields(
    doc: dict[str, Any], schema: dict[str, Any], depth: int = 0
) -> list[tuple[list[str | int], Any]]:
    """(location, a body holding NUL there) for each string field, nested objects and
    arrays of objects included."""
    schema = _resolve(doc, schema)
    found: list[tuple[list[str | int], Any]] = []
    for name, prop in schema.get("properties", {}).items():
        if _is_text(doc, prop):
            found.append(([name], {name: NUL}))
        if depth > 2:
            continue
        inner = _resolve(doc, prop)
        for option in inner.get("anyOf", []) or [inner]:
            option = _resolve(doc, option)
            if option.get("type") == "array" and "items" in option:
                for loc, body in _text_fields(doc, option["items"], depth + 1):
                    found.append(([name, 0, *loc], {name: [body]}))
            elif option.get("type") == "object" and "properties" in option:
                for loc, body in _text_fields(doc, option, depth + 1):
                    found.append(([name, *loc], {name: body}))
    return found


def _cases(app: FastAPI) -> list[tuple[str, str, dict[str, Any], list[Any], Any]]:
    """(method, url, params, expected loc, json body) for every text input."""
    doc = app.openapi()
    cases: list[tuple[str, str, dict[str, Any], list[Any], Any]] = []
    for path, item in doc["paths"].items():
        if path in OPEN | SIGNED:
            continue
        for method, op in item.items():
            url = re.sub(r"\{[^}]+\}", "X-1", path)
            for p in op.get("parameters", []):
                if p["in"] not in ("path", "query") or not _is_text(doc, p["schema"]):
                    continue
                if p["in"] == "path":
                    named = path.replace("{" + p["name"] + "}", "a%00b")
                    cases.append(
                        (method, re.sub(r"\{[^}]+\}", "X-1", named), {}, ["path", p["name"]], None)
                    )
                else:
                    cases.append((method, url, {p["name"]: NUL}, ["query", p["name"]], None))
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                for loc, value in _text_fields(doc, body["schema"]):
                    cases.append((method, url, {}, ["body", *loc], value))
    return cases


async def test_nul_in_any_text_input_is_a_422_naming_the_field(apps: dict[str, FastAPI]) -> None:
    checked = 0
    for name, app in apps.items():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"
        ) as http:
            for method, url, params, loc, body in _cases(app):
                headers = {**EVERYTHING, "Idempotency-Key": f"nul-walker-{checked:06d}"}
                response = await http.request(
                    method.upper(), url, params=params, json=body, headers=headers
                )
                where = (name, method, url, loc)
                assert response.status_code == 422, (where, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                named = [e["loc"] for e in response.json().get("errors", [])]
                assert loc in named, (where, named)
                checked += 1
    assert checked > 30
