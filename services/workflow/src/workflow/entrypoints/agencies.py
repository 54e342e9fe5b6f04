"""REST for collection agencies and for the lender about them.

An agency (scope ``collections:agency``; the agency is its token's subject) lists the cases
placed with it and reads one of them; a case not placed with it now (never placed, placed
with another agency, recalled) is 403, whether or not it exists. The lender reads each
agency's collections and commission (scope ``admin``). Placements themselves are decided
by the workflow (domain/placement.py), never over REST.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from collections_kit.auth import Principal, require
from collections_kit.money import Amount, InCurrency
from collections_kit.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from workflow.adapters.uow import SqlWorkflowUnitOfWork
from workflow.domain.placement import Placement, RecallReason, liquidation_rate
from workflow.entrypoints.api import LoanIdPath, Reads

Agency = Annotated[Principal, require("collections:agency")]
Admin = Annotated[Principal, require("admin")]
AgencyPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["agency-north"])]

router = APIRouter(prefix="/v1", tags=["agencies"])

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    403: {
        "model": Problem,
        "description": "Missing scope, or the case is not placed with the calling agency",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


class PlacementView(InCurrency):
    placement_id: str
    loan_id: str
    case_id: str
    agency: str
    tier: str
    commission_rate: Decimal = Field(description="The agency's commission on what is repaid.")
    currency: str
    placed_at: datetime
    until: datetime = Field(description="When the placement expires and the case is recalled.")
    amount_placed: Amount
    collected: Amount = Field(description="Repaid while placed with this agency.")
    commission: Amount = Field(description="Commission accrued on it.")


class PlacementPage(BaseModel):
    placements: list[PlacementView]
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class PlacedCaseView(InCurrency):
    """What an agency needs to work a case placed with it. Contact details are the
    notifier's; permits for each call too (POST /v1/contact-permits there)."""

    loan_id: str
    case_id: str
    borrower_id: str
    stage: str
    status: str
    currency: str
    outstanding: Amount
    amount_overdue: Amount
    days_past_due: int
    jurisdiction: str
    borrower_time_zone: str
    placement: PlacementView


class CommissionLine(InCurrency):
    currency: str
    payments: int
    collected: Amount
    commission: Amount


class LiquidationLine(InCurrency):
    currency: str
    placements: int = Field(
        description="Placements made with the agency in this currency, running ones included; "
        "a case recalled for a hold and resumed within its period is one placement."
    )
    placed: Amount = Field(
        description="Balance placed: the sum over those placements of the case's outstanding "
        "balance when it was placed (a resumed placement at its first placement's balance)."
    )
    collected: Amount = Field(
        description="Repaid while placed with the agency, net of reversals: the sum of the "
        "repayments recorded against its placements (the commission's basis)."
    )
    liquidation_rate: Decimal | None = Field(
        description="collected / placed, rounded half up to four places (0.4321 is 43.21%); "
        "running placements count with what they collected so far. Null when nothing "
        "was placed.",
        examples=["0.4321"],
    )


class AgencyPerformance(BaseModel):
    agency: str
    active: int = Field(description="Cases placed with the agency now.")
    ended: int = Field(description="Placements with the agency that ended (recalled).")
    recalls: dict[str, int] = Field(
        description="Ended placements by the recall's reason (every reason of "
        "collections.placements.v1, zero when none): repaid, hold, dispute, closure, "
        "expiry, stage_changed, out_of_tier. A recall for a hold counts even if the case "
        "came back (resumed).",
        examples=[{"repaid": 12, "expiry": 3, "stage_changed": 1}],
    )
    by_currency: list[LiquidationLine]


class AgencyCommission(BaseModel):
    agency: str
    placements: int = Field(description="Placements ever made with the agency.")
    running: int = Field(description="Cases placed with it now.")
    by_currency: list[CommissionLine]


def _view(p: Placement) -> PlacementView:
    return PlacementView(
        placement_id=p.placement_id,
        loan_id=p.loan_id,
        case_id=p.case_id,
        agency=p.agency,
        tier=p.tier,
        commission_rate=p.commission_rate,
        currency=p.currency,
        placed_at=p.placed_at,
        until=p.until,
        amount_placed=p.amount_placed,
        collected=p.collected,
        commission=p.commission,
    )


def _not_placed(loan_id: str) -> ProblemError:
    # The same answer for a loan that does not exist: an agency learns nothing of cases
    # that are not its own.
    return ProblemError(
        403,
        "Not placed with this agency",
        f"Loan {loan_id} is not placed with you now; only cases placed with an agency "
        "can be read by it.",
        type_="https://collections.example/problems/not-placed-with-agency",
    )


async def placed_with(work: SqlWorkflowUnitOfWork, loan_id: str, agency: str) -> Placement:
    """The running placement of ``loan_id`` with ``agency``; 403 if it is not placed with it
    now (never placed, placed with another agency, recalled, or no such loan)."""
    placement = await work.placements.running(loan_id)
    if placement is None or placement.agency != agency:
        raise _not_placed(loan_id)
    return placement


@router.get(
    "/placements",
    response_model=PlacementPage,
    responses=_FORBIDDEN,
    summary="The cases placed with the calling agency now, in loan-id order",
)
async def list_placements(
    uow: Reads,
    caller: Agency,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> PlacementPage:
    async with uow() as work:
        found = await work.placements.running_of(caller.subject, after=after, limit=limit)
    return PlacementPage(
        placements=[_view(p) for p in found],
        next_after=found[-1].loan_id if len(found) == limit else None,
    )


@router.get(
    "/placements/{loan_id}",
    response_model=PlacedCaseView,
    responses=_FORBIDDEN,
    summary="A case placed with the calling agency (403 for any other)",
)
async def get_placed_case(loan_id: LoanIdPath, uow: Reads, caller: Agency) -> PlacedCaseView:
    async with uow() as work:
        placement = await placed_with(work, loan_id, caller.subject)
        case = await work.cases.get(loan_id)
    if case is None:  # pragma: no cover - a placement is made only for a case
        raise _not_placed(loan_id)
    return PlacedCaseView(
        loan_id=case.loan_id,
        case_id=case.case_id,
        borrower_id=case.borrower_id,
        stage=case.stage.value,
        status=case.status.value,
        currency=case.currency,
        outstanding=case.outstanding,
        amount_overdue=case.amount_overdue,
        days_past_due=case.days_past_due,
        jurisdiction=case.jurisdiction,
        borrower_time_zone=case.borrower_time_zone,
        placement=_view(placement),
    )


@router.get(
    "/agencies/{agency}/commission",
    response_model=AgencyCommission,
    responses=PROBLEM_RESPONSES,
    tags=["reports"],
    summary="What an agency collected on placed cases and the commission accrued, by currency",
)
async def get_commission(
    agency: AgencyPath, request: Request, uow: Reads, _: Admin
) -> AgencyCommission:
    async with uow() as work:
        counts = await work.placements.placed_counts(agency)
        lines = await work.placements.commission_of(agency)
    _known_or_404(request, agency, counts)
    return AgencyCommission(
        agency=agency,
        placements=counts["placements"],
        running=counts["running"],
        by_currency=[CommissionLine(**line) for line in lines],
    )


@router.get(
    "/agencies/{agency}/performance",
    response_model=AgencyPerformance,
    responses=PROBLEM_RESPONSES,
    tags=["reports"],
    summary="An agency's placements active and ended, recalls by reason and liquidation rate",
    description="Computed from the placements and the repayments recorded against them, "
    "when asked (no counters): per currency, **liquidation rate = collected / placed**, "
    "where *collected* is what was repaid while a case was placed with the agency, net of "
    "reversals, and *placed* is the outstanding balance of each of its placements when it "
    "was placed (a case resumed after a hold within the same period counted once).",
)
async def get_performance(
    agency: AgencyPath, request: Request, uow: Reads, _: Admin
) -> AgencyPerformance:
    async with uow() as work:
        counts = await work.placements.placed_counts(agency)
        recalls = await work.placements.recalls_of(agency)
        placed = await work.placements.placed_of(agency)
        commission = await work.placements.commission_of(agency)
    _known_or_404(request, agency, counts)
    collected = {line["currency"]: line["collected"] for line in commission}
    lines = []
    for line in placed:
        got = collected.get(line["currency"], Decimal(0))
        lines.append(
            LiquidationLine(
                currency=line["currency"],
                placements=line["placements"],
                placed=line["placed"],
                collected=got,
                liquidation_rate=liquidation_rate(got, line["placed"]),
            )
        )
    return AgencyPerformance(
        agency=agency,
        active=counts["running"],
        ended=counts["placements"] - counts["running"],
        recalls={r.value: 0 for r in RecallReason} | recalls,
        by_currency=lines,
    )


def _known_or_404(request: Request, agency: str, counts: dict[str, int]) -> None:
    """An agency is known if the placement policy names it or it ever held a placement."""
    known: frozenset[str] = request.app.state.runtime.state.get("agencies", frozenset())
    if agency not in known and not counts["placements"]:
        raise ProblemError(
            404,
            "Agency not found",
            f"No agency {agency} in the placement policy, and none ever held a placement.",
            type_="https://collections.example/problems/agency-not-found",
        )
