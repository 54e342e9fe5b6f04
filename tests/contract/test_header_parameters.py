"""A header is text or absent: no OpenAPI document lets one be JSON null.

FastAPI documents an optional ``str | None`` header as ``anyOf: [string, null]``; the API
fuzzer took that at its word and sent "null", which the service rightly refused as too
short an Idempotency-Key, and the run failed on a schema that promised otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

OPENAPI = sorted((Path(__file__).parents[2] / "contracts" / "openapi").glob("*.json"))


def header_parameters(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path} {parameter['name']}", parameter["schema"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for parameter in operation.get("parameters", ())
        if parameter.get("in") == "header"
    ]


@pytest.mark.parametrize("path", OPENAPI, ids=lambda p: p.stem)
def test_no_header_parameter_may_be_null(path: Path) -> None:
    document = json.loads(path.read_text())
    nullable = [
        where
        for where, schema in header_parameters(document)
        if {"type": "null"} in schema.get("anyOf", ()) or schema.get("type") == "null"
    ]
    assert nullable == []


def test_the_optional_idempotency_key_keeps_its_constraints() -> None:
    document = json.loads((OPENAPI[0].parent / "workflow.json").read_text())
    schemas = dict(header_parameters(document))
    key = schemas["POST /v1/queues/{queue}/next Idempotency-Key"]
    assert (key["type"], key["minLength"], key["maxLength"]) == ("string", 8, 200)
