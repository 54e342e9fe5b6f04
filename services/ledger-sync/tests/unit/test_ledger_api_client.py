"""The ledger API client: parsing, retries with jitter, the breaker. In-memory transport."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from pydantic import ValidationError

from ledger_sync.adapters.breaker import CircuitBreaker
from ledger_sync.adapters.ledger_api import HttpLedgerApi, LedgerApiConfig, LedgerUnavailable
from ledger_sync.settings import LedgerSyncSettings

BALANCE = {"loan_id": "L1", "currency": "CNY", "balance": "1050.25", "sequence": 3}


def posting(seq: int, amount: str = "10.00") -> dict[str, object]:
    return {
        "posting_id": f"p{seq}",
        "sequence": seq,
        "kind": "fee",
        "currency": "CNY",
        "amount": amount,
        "booked_at": "2026-11-22T10:00:00+00:00",
    }


class Ledger:
    """Answers from a script: each request pops the next response (or repeats the last)."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        nxt = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(nxt, Exception):
            raise nxt
        return nxt


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, json=body)


def client(
    ledger: Callable[[httpx.Request], httpx.Response],
    *,
    attempts: int = 3,
    threshold: int = 5,
    sleeps: list[float] | None = None,
    clock: Callable[[], float] | None = None,
) -> HttpLedgerApi:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    breaker = CircuitBreaker(
        failure_threshold=threshold, reset_after_s=10, **({"clock": clock} if clock else {})
    )
    return HttpLedgerApi(
        LedgerApiConfig("http://ledger.test", attempts=attempts, backoff_s=0.1),
        breaker,
        transport=httpx.MockTransport(ledger),
        sleep=sleep,
        rng=random.Random(7),
    )


async def test_the_balance_is_read_as_decimal_with_its_sequence() -> None:
    api = client(Ledger(ok(BALANCE)))
    state = await api.balance("L1")
    assert state is not None
    assert state.balance == Decimal("1050.25")
    assert state.sequence == 3
    assert state.currency == "CNY"


async def test_an_unknown_loan_is_none_and_not_a_failure() -> None:
    api = client(Ledger(httpx.Response(404, json={"title": "Unknown loan"})), threshold=1)
    assert await api.balance("L-none") is None
    assert api.breaker.state == "closed"


async def test_loan_ids_are_escaped_in_the_path() -> None:
    ledger = Ledger(ok(BALANCE))
    await client(ledger).balance("L/../admin")
    assert ledger.requests[0].url.raw_path == b"/v1/loans/L%2F..%2Fadmin/balance"


async def test_a_float_amount_is_refused_as_malformed() -> None:
    api = client(Ledger(ok({**BALANCE, "balance": 1050.25})))
    with pytest.raises(LedgerUnavailable, match="malformed"):
        await api.balance("L1")


async def test_a_503_is_retried_with_jittered_backoff_then_succeeds() -> None:
    sleeps: list[float] = []
    ledger = Ledger(httpx.Response(503), httpx.Response(503), ok(BALANCE))
    state = await client(ledger, sleeps=sleeps).balance("L1")
    assert state is not None
    assert len(ledger.requests) == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.2
    assert 0 <= sleeps[1] <= 0.4


async def test_transport_errors_exhaust_the_attempts_and_say_so() -> None:
    ledger = Ledger(httpx.ConnectError("refused"))
    with pytest.raises(LedgerUnavailable, match=r"after 3 attempts.*ConnectError"):
        await client(ledger).balance("L1")
    assert len(ledger.requests) == 3


async def test_an_open_breaker_fails_fast_without_a_request() -> None:
    ledger = Ledger(httpx.Response(503))
    api = client(ledger, attempts=2, threshold=2)
    with pytest.raises(LedgerUnavailable):
        await api.balance("L1")
    assert api.breaker.state == "open"
    sent = len(ledger.requests)
    with pytest.raises(LedgerUnavailable, match="circuit open"):
        await api.balance("L1")
    assert len(ledger.requests) == sent


async def test_a_client_error_is_not_retried() -> None:
    ledger = Ledger(httpx.Response(400))
    with pytest.raises(LedgerUnavailable, match="HTTP 400"):
        await client(ledger).balance("L1")
    assert len(ledger.requests) == 1


async def test_postings_are_paged_until_the_wanted_sequence() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        found = [posting(s) for s in range(after + 1, min(after + 2, 5) + 1)]
        return ok({"loan_id": "L1", "postings": found, "last_sequence": 5})

    got = await client(pages).postings_after("L1", 1, 5)
    assert [p.sequence for p in got] == [2, 3, 4, 5]
    assert {(p.loan_id, p.amount) for p in got} == {("L1", Decimal("10.00"))}


async def test_an_empty_page_ends_the_paging() -> None:
    ledger = Ledger(ok({"loan_id": "L1", "postings": [], "last_sequence": 3}))
    assert await client(ledger).postings_after("L1", 3, 5) == []
    assert len(ledger.requests) == 1


async def test_invalid_json_is_unavailable() -> None:
    ledger = Ledger(httpx.Response(200, content=b"{not json"))
    with pytest.raises(LedgerUnavailable, match="invalid JSON"):
        await client(ledger).balance("L1")


def test_settings_refuse_a_max_age_without_a_ledger_api() -> None:
    with pytest.raises(ValidationError, match="projection_max_age_s needs ledger_api_url"):
        LedgerSyncSettings(projection_max_age_s=60)
    settings = LedgerSyncSettings(projection_max_age_s=60, ledger_api_url="http://l:1/")
    assert settings.ledger_api_url == "http://l:1"


def test_settings_refuse_a_float_looking_tolerance_that_is_not_a_decimal() -> None:
    with pytest.raises(ValidationError):
        LedgerSyncSettings(tolerance="one")
    assert json.loads(LedgerSyncSettings().model_dump_json())["tolerance"] == "1.00"
