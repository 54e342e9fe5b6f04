"""Schemathesis hooks for the API fuzzing run (loaded through SCHEMATHESIS_HOOKS).

A well-behaved client sends a fresh Idempotency-Key with every new request; schemathesis
reuses the documented example key across different bodies, which the services rightly
refuse (422, "Idempotency-Key reused", tested on its own in the seed stories). So every
case whose key was generated as valid gets a fresh one; negative cases keep theirs.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,200}$")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:  # noqa: ARG001 - schemathesis's hook signature
    _fresh_key(case)
    if case.path.endswith("/kpis"):
        _period_in_order(case)
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return
    if isinstance(case.body, dict | list):
        case.body = _storable(case.body)
        if case.path.endswith("/arrangements") and isinstance(case.body, dict):
            _due_from_tomorrow(case.body)
        if case.path.endswith("/holds") and isinstance(case.body, dict):
            _hold_in_effect(case.body)
        if case.path.endswith("/result") and isinstance(case.body, dict):
            _promise_from_tomorrow(case.body)
        if case.path.endswith("/proposals") and isinstance(case.body, dict):
            _proposal_that_adds_up(case.body)


def _period_in_order(case: Any) -> None:
    """GET /v1/kpis: a period ends after it starts and lasts at most 366 days, or it is
    refused with 422 naming the parameter (a rule no schema can state): valid generated
    bounds are made so, the end kept."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY):
        return
    query = case.query
    if not isinstance(query, dict) or not query.get("from"):
        return
    try:
        start = datetime.fromisoformat(str(query["from"]))
        # Absent, null or empty (as null is sent in a query): the end is now.
        end = datetime.fromisoformat(str(query["to"])) if query.get("to") else None
        if end is None:
            query["to"] = (start + timedelta(days=1)).isoformat()
        elif not start < end <= start + timedelta(days=366):
            query["from"] = (end - timedelta(days=1)).isoformat()
    except (ValueError, OverflowError):
        return  # not a date-time Python reads: left as generated


def _fresh_key(case: Any) -> None:
    headers = case.headers
    if not headers or not isinstance(headers.get("Idempotency-Key"), str):
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    if _KEY.match(headers["Idempotency-Key"]):
        headers["Idempotency-Key"] = str(uuid.uuid4())


def _storable(value: Any) -> Any:
    """A valid body as a client can send it: text without NUL or unpaired surrogates,
    which no JSON Schema keyword here can exclude and every service refuses with 422
    (README; tests/integration/test_unstorable_text.py walks every text input with one)."""
    if isinstance(value, str):
        return "".join(ch for ch in value if ch != "\x00" and not "\ud800" <= ch <= "\udfff")
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value


def _due_from_tomorrow(body: dict[str, Any]) -> None:
    """Payments due before today in the borrower's zone are refused with 422 (a rule no
    schema can state): valid generated dates are moved ahead, order kept."""
    schedule = body.get("schedule")
    if not isinstance(schedule, list):
        return
    start = datetime.now(UTC) + timedelta(days=2)
    for i, instalment in enumerate(schedule):
        if isinstance(instalment, dict) and isinstance(instalment.get("due_at"), str):
            instalment["due_at"] = (start + timedelta(days=30 * i)).isoformat()


def _promise_from_tomorrow(body: dict[str, Any]) -> None:
    """A task result's promise is an arrangement: due before today, it is refused like one
    (422, see _due_from_tomorrow); a valid generated date is moved ahead."""
    promise = body.get("promise")
    if isinstance(promise, dict) and isinstance(promise.get("due_at"), str):
        promise["due_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()


# What the example loan owes (test_api_fuzzing.seed): a proposal's payments add up to it.
EXAMPLE_OUTSTANDING = Decimal("5000.00")


def _proposal_that_adds_up(body: dict[str, Any]) -> None:
    """A proposal's payments are due from tomorrow, in order, each instalment above zero,
    and add up to what is owed less the waivers (422 otherwise, tested on their own in
    test_proposals: rules across fields and the case, which no schema can state): valid
    generated amounts and dates are rewritten so, the number of instalments kept."""
    down = body.get("down_payment")
    instalments = body.get("instalments", [])
    if not isinstance(down, dict) or not isinstance(instalments, list):
        return
    waivers = body.get("waivers")
    waived = Decimal(0)
    if isinstance(waivers, dict):
        try:
            waived = sum((Decimal(str(v)) for v in waivers.values()), Decimal(0))
        except ArithmeticError:
            waived = EXAMPLE_OUTSTANDING
        if waived >= EXAMPLE_OUTSTANDING / 2:
            body["waivers"], waived = {}, Decimal(0)
    owed = EXAMPLE_OUTSTANDING - waived
    start = datetime.now(UTC) + timedelta(days=2)
    down_amount = (owed / 10).quantize(Decimal("0.01"))
    down.update(due_at=start.isoformat(), amount=str(down_amount))
    rest, count = owed - down_amount, len(instalments)
    each = (rest / count).quantize(Decimal("0.01"), rounding=ROUND_DOWN) if count else Decimal(0)
    for i, instalment in enumerate(instalments):
        if isinstance(instalment, dict):
            last = i == count - 1
            instalment["due_at"] = (start + timedelta(days=30 * (i + 1))).isoformat()
            instalment["amount"] = str(rest - each * (count - 1) if last else each)
    if not count:
        down["amount"] = str(owed)


def _hold_in_effect(body: dict[str, Any]) -> None:
    """A hold takes effect now or earlier and, when it has an end, ends later than it took
    effect (422 otherwise, tested on its own in the workflow's holds tests: rules across two
    fields and the clock, which no schema can state): valid generated dates are moved so."""
    now = datetime.now(UTC)
    start = now - timedelta(days=1)
    if isinstance(body.get("effective_from"), str):
        body["effective_from"] = start.isoformat()
    if isinstance(body.get("until"), str):
        body["until"] = (now + timedelta(days=30)).isoformat()
