"""A stand-in for the ledger's HTTP API, on loopback, for the demo and the tests.

It is a test double of an external system: nothing in the services imports it. It keeps
each loan's postings in memory and serves the two reads ledger-sync falls back on:

    GET  /v1/loans/{loan_id}/balance           -> {loan_id, currency, balance, sequence, as_of}
    GET  /v1/loans/{loan_id}/postings?after=N&limit=M
                                               -> {loan_id, postings: [...], last_sequence}

404 (problem+json) when the ledger does not know the loan. Amounts are decimal strings.

Admin endpoints drive it from a test or the demo:

    POST /admin/loans/{loan_id}/postings       book a posting (its sequence must be the next)
    PUT  /admin/availability                   {"up": false} -> every /v1 read answers 503;
                                               {"delay_s": 3} -> reads answer that late
    DELETE /admin/loans                        forget everything

Run it alone with ``python deploy/dev/ledger_double.py --port 18180``; tests start it in a
thread with :class:`LedgerDoubleServer` (a closed port is the other way to be "down").
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _decimal(value: Any) -> Any:
    if isinstance(value, float | bool):
        raise ValueError("amounts are decimal strings, never floats")
    return value


Money = Annotated[Decimal, BeforeValidator(_decimal)]
LoanId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


class PostingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    posting_id: str
    sequence: int = Field(ge=1)
    kind: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    amount: Money
    booked_at: AwareDatetime
    repayment_id: str | None = None


class Availability(BaseModel):
    up: bool = True
    delay_s: float = Field(default=0.0, ge=0, le=60)


@dataclass
class LedgerBook:
    """The ledger's state: per loan, its postings in sequence."""

    postings: dict[str, list[PostingIn]] = field(default_factory=dict)
    availability: Availability = field(default_factory=Availability)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def book(self, loan_id: str, posting: PostingIn) -> None:
        with self.lock:
            book = self.postings.setdefault(loan_id, [])
            expected = len(book) + 1
            if posting.sequence != expected:
                raise ValueError(f"sequence {posting.sequence} is not the next ({expected})")
            if book and book[0].currency != posting.currency:
                raise ValueError("a loan is kept in one currency")
            book.append(posting)

    def snapshot(self, loan_id: str) -> list[PostingIn] | None:
        with self.lock:
            book = self.postings.get(loan_id)
            return list(book) if book is not None else None


def _money(value: Decimal) -> str:
    return format(value, "f")


def _posting(p: PostingIn) -> dict[str, Any]:
    return {
        "posting_id": p.posting_id,
        "sequence": p.sequence,
        "kind": p.kind,
        "currency": p.currency,
        "amount": _money(p.amount),
        "booked_at": p.booked_at.isoformat(),
        "repayment_id": p.repayment_id,
    }


def _problem(status: int, title: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status},
        status_code=status,
        media_type="application/problem+json",
    )


def create_app(book: LedgerBook) -> FastAPI:
    app = FastAPI(title="Ledger (test double)", version="1.0.0")

    async def gate() -> JSONResponse | None:
        if book.availability.delay_s:
            await asyncio.sleep(book.availability.delay_s)
        if not book.availability.up:
            return _problem(503, "Ledger unavailable")
        return None

    @app.get("/v1/loans/{loan_id}/balance", response_model=None)
    async def balance(loan_id: LoanId) -> Any:
        if (down := await gate()) is not None:
            return down
        postings = book.snapshot(loan_id)
        if not postings:
            return _problem(404, "Unknown loan")
        return {
            "loan_id": loan_id,
            "currency": postings[0].currency,
            "balance": _money(sum((p.amount for p in postings), Decimal("0"))),
            "sequence": postings[-1].sequence,
            "as_of": datetime.now(UTC).isoformat(),
        }

    @app.get("/v1/loans/{loan_id}/postings", response_model=None)
    async def postings(
        loan_id: LoanId,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> Any:
        if (down := await gate()) is not None:
            return down
        found = book.snapshot(loan_id)
        if not found:
            return _problem(404, "Unknown loan")
        page = [p for p in found if p.sequence > after][:limit]
        return {
            "loan_id": loan_id,
            "postings": [_posting(p) for p in page],
            "last_sequence": found[-1].sequence,
        }

    @app.post("/admin/loans/{loan_id}/postings", status_code=201, response_model=None)
    async def book_posting(loan_id: LoanId, posting: PostingIn) -> Any:
        try:
            book.book(loan_id, posting)
        except ValueError as exc:
            return _problem(409, str(exc))
        return {"loan_id": loan_id, "sequence": posting.sequence}

    @app.put("/admin/availability")
    async def set_availability(availability: Availability) -> Availability:
        book.availability = availability
        return availability

    @app.delete("/admin/loans", status_code=204)
    async def reset() -> None:
        with book.lock:
            book.postings.clear()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class LedgerDoubleServer:
    """The double on a loopback port, served by uvicorn in a background thread."""

    def __init__(
        self, book: LedgerBook | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.book = book or LedgerBook()
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> LedgerDoubleServer:
        # Bound here, before the thread starts: the port is known and cannot be taken.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port or self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.book), log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="ledger-double", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the ledger double did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Close the port (a harder "down" than 503); ``start`` reopens the same port."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


def main() -> None:
    parser = argparse.ArgumentParser(description="The ledger's HTTP API, as a test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18180)
    args = parser.parse_args()
    uvicorn.run(create_app(LedgerBook()), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
