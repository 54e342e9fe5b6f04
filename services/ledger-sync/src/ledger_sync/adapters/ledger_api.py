"""The ledger's HTTP API: the fallback when the projection cannot be trusted.

Two reads, both idempotent GETs:

- ``GET {base}/v1/loans/{loan_id}/balance`` -> ``{loan_id, currency, balance, sequence}``:
  the balance after the loan's posting number ``sequence`` (404: the ledger does not know
  the loan);
- ``GET {base}/v1/loans/{loan_id}/postings?after=N&limit=M`` -> ``{loan_id, postings,
  last_sequence}``: the loan's postings with ``sequence > N`` in order, at most M of them.

Amounts are decimal strings, never JSON numbers; a float is refused like any malformed
answer. Every call is bounded: short timeouts, a few attempts with full-jitter backoff, and
a circuit breaker that fails fast while the ledger is down, so a caller waiting for the
ledger waits seconds at most. Callers never hold a database transaction across these calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from collections_kit.money import Amount, CurrencyCode
from ledger_sync.adapters.breaker import CircuitBreaker
from ledger_sync.domain.ledger import LedgerState, Posting
from ledger_sync.metrics import LEDGER_API_BREAKER_OPEN as BREAKER_OPEN
from ledger_sync.metrics import LEDGER_API_CALLS as CALLS
from ledger_sync.metrics import LEDGER_API_SECONDS

log = logging.getLogger(__name__)


# Bounds a repair: a loan with more missing postings than this is left stale (and refused)
# rather than holding a check for minutes.
_MAX_PAGES = 20
_PAGE = 500


class LedgerUnavailable(Exception):  # noqa: N818 - a condition, not a programming error
    """The ledger's API could not give an answer now (down, slow, broken, breaker open)."""


class LedgerApi(Protocol):
    async def balance(self, loan_id: str) -> LedgerState | None:
        """The ledger's balance and sequence for the loan; None if it does not know it."""
        ...

    async def postings_after(self, loan_id: str, after: int, up_to: int) -> list[Posting]:
        """The loan's postings with ``after < sequence``, at least up to ``up_to``."""
        ...


class _Wire(BaseModel):
    # An external API: new fields must not break us; wrong types must.
    model_config = ConfigDict(extra="ignore", frozen=True)


_W = TypeVar("_W", bound=_Wire)


class _Balance(_Wire):
    loan_id: str
    currency: CurrencyCode
    balance: Amount
    sequence: int = Field(ge=0)


class _Posting(_Wire):
    posting_id: str
    sequence: int = Field(ge=1)
    kind: str
    currency: CurrencyCode
    amount: Amount
    booked_at: AwareDatetime
    repayment_id: str | None = None


class _Postings(_Wire):
    loan_id: str
    postings: list[_Posting]
    last_sequence: int = Field(ge=0)


@dataclass(frozen=True)
class LedgerApiConfig:
    base_url: str
    connect_timeout_s: float = 0.5
    read_timeout_s: float = 2.0
    attempts: int = 3
    backoff_s: float = 0.1


class HttpLedgerApi:
    def __init__(
        self,
        config: LedgerApiConfig,
        breaker: CircuitBreaker,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self.breaker = breaker
        self._transport = transport
        self._sleep = sleep
        self._rng = rng or random.Random()  # jitter, not secrecy
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            c = self._config
            self._client = httpx.AsyncClient(
                base_url=c.base_url.rstrip("/"),
                transport=self._transport,
                timeout=httpx.Timeout(
                    c.read_timeout_s, connect=c.connect_timeout_s, pool=c.connect_timeout_s
                ),
                headers={"accept": "application/json"},
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def balance(self, loan_id: str) -> LedgerState | None:
        body = await self._get("balance", f"/v1/loans/{quote(loan_id, safe='')}/balance", {})
        if body is None:
            return None
        parsed = self._parse(_Balance, body, "balance")
        return LedgerState(parsed.currency, parsed.balance, parsed.sequence)

    async def postings_after(self, loan_id: str, after: int, up_to: int) -> list[Posting]:
        path = f"/v1/loans/{quote(loan_id, safe='')}/postings"
        out: list[Posting] = []
        cursor = after
        for _ in range(_MAX_PAGES):
            body = await self._get("postings", path, {"after": cursor, "limit": _PAGE})
            if body is None:
                return out
            page = self._parse(_Postings, body, "postings")
            out.extend(
                Posting(
                    p.posting_id,
                    loan_id,
                    p.sequence,
                    p.kind,
                    p.currency,
                    p.amount,
                    p.booked_at,
                    p.repayment_id,
                )
                for p in page.postings
            )
            if not page.postings or page.postings[-1].sequence >= max(up_to, page.last_sequence):
                return out
            cursor = page.postings[-1].sequence
        return out

    def _parse(self, model: type[_W], body: Any, endpoint: str) -> _W:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            # A ledger answering nonsense is as good as down: never build on it.
            self._failed(endpoint, "malformed")
            raise LedgerUnavailable(f"malformed {endpoint} answer from the ledger") from exc

    async def _get(self, endpoint: str, path: str, params: dict[str, Any]) -> Any:
        """The decoded JSON body; None for 404. Raises LedgerUnavailable."""
        last = "no attempt made"
        for attempt in range(self._config.attempts):
            if attempt:
                # Full jitter: replicas retrying together must not hammer the ledger in step.
                await self._sleep(self._rng.uniform(0, self._config.backoff_s * 2**attempt))
            if not self.breaker.allow():
                CALLS.labels(endpoint, "breaker_open").inc()
                raise LedgerUnavailable(f"circuit open ({last})" if attempt else "circuit open")
            started = time.perf_counter()
            try:
                response = await self._http().get(path, params=params)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
                self._failed(endpoint, "transport")
                continue
            finally:
                LEDGER_API_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
            if response.status_code == 404:
                self._succeeded(endpoint, "not_found")
                return None
            if response.status_code >= 500 or response.status_code == 429:
                last = f"HTTP {response.status_code}"
                self._failed(endpoint, f"http_{response.status_code // 100}xx")
                continue
            if response.status_code != 200:
                self._failed(endpoint, "unexpected")
                raise LedgerUnavailable(f"unexpected HTTP {response.status_code} from the ledger")
            try:
                body = response.json()
            except ValueError as exc:
                self._failed(endpoint, "malformed")
                raise LedgerUnavailable("the ledger answered with invalid JSON") from exc
            self._succeeded(endpoint, "ok")
            return body
        raise LedgerUnavailable(
            f"ledger API unavailable after {self._config.attempts} attempts ({last})"
        )

    def _failed(self, endpoint: str, result: str) -> None:
        self.breaker.record_failure()
        CALLS.labels(endpoint, result).inc()
        BREAKER_OPEN.set(1 if self.breaker.state == "open" else 0)

    def _succeeded(self, endpoint: str, result: str) -> None:
        self.breaker.record_success()
        CALLS.labels(endpoint, result).inc()
        BREAKER_OPEN.set(0)
