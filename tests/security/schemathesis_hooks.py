"""Schemathesis hooks for the API fuzzing run (loaded through SCHEMATHESIS_HOOKS).

A well-behaved client sends a fresh Idempotency-Key with every new request; schemathesis
reuses the documented example key across different bodies, which the services rightly
refuse (422, "Idempotency-Key reused", tested on its own in the seed stories). So every
case whose key was generated as valid gets a fresh one; negative cases keep theirs.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,200}$")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers
    if not headers or not isinstance(headers.get("Idempotency-Key"), str):
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    if _KEY.match(headers["Idempotency-Key"]):
        headers["Idempotency-Key"] = str(uuid.uuid4())
