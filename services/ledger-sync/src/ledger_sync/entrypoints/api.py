"""REST: the projected balance of a loan with its freshness; the latest reconciliation run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from collections_kit.auth import Principal, require
from collections_kit.money import Amount, InCurrency
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from ledger_sync.adapters.uow import SqlLedgerSyncUnitOfWork
from ledger_sync.domain.ledger import FreshnessPolicy, staleness

LoanIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["L-000123"])]
Reader = Annotated[Principal, require("cases:read")]
Admin = Annotated[Principal, require("admin")]


def _uow(request: Request) -> Callable[[], SqlLedgerSyncUnitOfWork]:
    start: Callable[[], SqlLedgerSyncUnitOfWork] = request.app.state.runtime.state["uow"]
    return start


# The reads' transaction, rolled back after (nothing is written).
Reads = Annotated[Callable[[], SqlLedgerSyncUnitOfWork], Depends(_uow)]


class BalanceView(InCurrency):
    loan_id: str
    currency: str
    ledger_balance: Amount
    money_in_flight: Amount
    outstanding: Amount
    ledger_watermark: int
    has_gap: bool
    updated_at: datetime = Field(description="When a posting was last applied.")
    verified_at: datetime | None = Field(
        description="When the ledger's own API last agreed nothing was booked beyond the "
        "watermark; null if it was never asked."
    )
    age_seconds: float = Field(
        description="Seconds since the projection last matched the "
        "ledger (the later of updated_at and verified_at)."
    )
    fresh: bool = Field(
        description="A balance check would be answered from this projection "
        "without asking the ledger's API."
    )
    stale_reason: Literal["gap", "aged"] | None = Field(
        description="Why it is not fresh: a sequence gap, or older than the maximum age."
    )


class FindingView(InCurrency):
    loan_id: str
    case_id: str
    kind: Literal["nothing_owed", "drift", "skipped"]
    published: bool = Field(description="A BalanceCorrected was published for it in this run.")
    event_id: str | None
    currency: str | None
    collections_outstanding: Amount | None
    ledger_outstanding: Amount | None
    ledger_watermark: int
    detail: str


class ReconciliationRunView(BaseModel):
    run_id: str
    status: Literal["running", "completed", "abandoned"]
    started_at: datetime
    finished_at: datetime | None
    examined: int
    counts: dict[str, int] = Field(
        description="Findings by kind (in_sync, nothing_owed, "
        "drift, skipped) and corrections published."
    )
    findings: list[FindingView] = Field(
        description="Every case corrected or skipped; cases in sync are only counted."
    )


router = APIRouter(prefix="/v1")


@router.get(
    "/balances/{loan_id}",
    response_model=BalanceView,
    responses=PROBLEM_RESPONSES,
    tags=["balances"],
    summary="The ledger balance as projected here, net of payments in flight",
)
async def get_balance(loan_id: LoanIdPath, uow: Reads, request: Request, _: Reader) -> BalanceView:
    async with uow() as work:
        repo = work.ledger
        projection = await repo.projection(loan_id)
        if projection is None:
            raise ProblemError(
                404,
                "Loan not projected",
                f"The ledger has booked nothing for loan {loan_id} yet.",
                type_="https://collections.example/problems/loan-not-projected",
            )
        in_flight = await repo.money_in_flight(loan_id)
        gap = await repo.has_gap(loan_id)
    state = request.app.state.runtime.state
    now = state["clock"].now()
    freshness: FreshnessPolicy = state.get("freshness") or FreshnessPolicy()
    stale = staleness(projection, gap, now, freshness)
    return BalanceView(
        loan_id=loan_id,
        currency=projection.currency,
        ledger_balance=projection.balance,
        money_in_flight=in_flight,
        outstanding=projection.balance - in_flight,
        ledger_watermark=projection.watermark,
        has_gap=gap,
        updated_at=projection.updated_at,
        verified_at=projection.verified_at,
        age_seconds=max((now - projection.current_as_of).total_seconds(), 0.0),
        fresh=stale is None,
        stale_reason=None if stale is None or stale.reason == "missing" else stale.reason,
    )


@router.get(
    "/reconciliation/runs/latest",
    response_model=ReconciliationRunView,
    responses=PROBLEM_RESPONSES,
    tags=["reconciliation"],
    summary="The latest reconciliation pass: what it examined and what it changed",
)
async def latest_reconciliation_run(uow: Reads, _: Admin) -> ReconciliationRunView:
    async with uow() as work:
        report = await work.runs.latest()
    if report is None:
        raise ProblemError(
            404,
            "No reconciliation run yet",
            "No reconciliation pass has started yet.",
            type_="https://collections.example/problems/no-reconciliation-run",
        )
    return ReconciliationRunView.model_validate(
        {
            "run_id": report.run_id,
            "status": report.status,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "examined": report.examined,
            "counts": report.counts,
            "findings": [{k: v for k, v in f.items() if k != "run_id"} for f in report.findings],
        }
    )
