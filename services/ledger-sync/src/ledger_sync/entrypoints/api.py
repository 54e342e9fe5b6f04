"""REST: the projected balance of a loan, with its watermark and freshness."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from collections_kit.money import Amount
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from collections_kit.runtime import EngineDep as Engine
from ledger_sync.adapters.repository import LedgerRepository

LoanIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["L-000123"])]


class BalanceView(BaseModel):
    loan_id: str
    currency: str
    ledger_balance: Amount
    money_in_flight: Amount
    outstanding: Amount
    ledger_watermark: int
    has_gap: bool
    updated_at: datetime
    age_seconds: float


router = APIRouter(prefix="/v1", tags=["balances"])


@router.get("/balances/{loan_id}", response_model=BalanceView, responses=PROBLEM_RESPONSES,
            summary="The ledger balance as projected here, net of payments in flight")
async def get_balance(loan_id: LoanIdPath, engine: Engine, request: Request) -> BalanceView:
    async with engine.connect() as conn:
        repo = LedgerRepository(conn)
        projection = await repo.projection(loan_id)
        if projection is None:
            raise ProblemError(404, "Loan not projected",
                               f"The ledger has booked nothing for loan {loan_id} yet.",
                               type_="https://collections.example/problems/loan-not-projected")
        in_flight = await repo.money_in_flight(loan_id)
        gap = await repo.has_gap(loan_id)
    now = request.app.state.runtime.state["clock"].now()
    return BalanceView(
        loan_id=loan_id, currency=projection.currency, ledger_balance=projection.balance,
        money_in_flight=in_flight, outstanding=projection.balance - in_flight,
        ledger_watermark=projection.watermark, has_gap=gap, updated_at=projection.updated_at,
        age_seconds=max((now - projection.updated_at).total_seconds(), 0.0),
    )
