"""REST for a borrower's proposal: a down payment, instalments and charges to waive,
answered by the product's negotiation policy (domain/negotiation.py).

Who proposes, by the token's scope: the lender's borrower portal and operators
(``cases:write``), a collector working the queues (``collections:work``) or a collection
agency (``collections:agency``), which may propose only for a case placed with it now (the
same 403 as when it reads one). The answer is 200 whatever the verdict: accepted (the plan
is in force on the case returned), countered (the terms the policy would accept) or refused
(the rules that refused it). A malformed proposal is a 422 naming the field, and nothing is
recorded.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from collections_kit.auth import Principal, require_any
from collections_kit.clock import Clock
from collections_kit.money import Amount, InCurrency, NonNegativeAmount
from collections_kit.problems import PROBLEM_JSON, Problem
from workflow.app.commands import Outcome
from workflow.domain import messages as m
from workflow.domain import negotiation as n
from workflow.domain.model import Case
from workflow.entrypoints.agencies import placed_with
from workflow.entrypoints.api import (
    CASE_PROBLEMS,
    CaseView,
    IdempotencyKey,
    LoanIdPath,
    Reads,
    Timestamp,
    _command,
)

Proposer = Annotated[
    Principal, require_any("cases:write", "collections:work", "collections:agency")
]

router = APIRouter(prefix="/v1", tags=["cases"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **CASE_PROBLEMS,
    403: {
        "model": Problem,
        "description": "Missing scope, or (an agency) the case is not placed with it",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


class PaymentTerms(BaseModel):
    due_at: Timestamp = Field(description="Not before today in the borrower's time zone.")
    amount: NonNegativeAmount


class WaiverRequest(BaseModel):
    penalty_interest: NonNegativeAmount = Decimal(0)
    fees: NonNegativeAmount = Decimal(0)
    principal: NonNegativeAmount = Decimal(0)


class ProposalRequest(BaseModel):
    down_payment: PaymentTerms = Field(description="The first payment; may be zero.")
    instalments: list[PaymentTerms] = Field(
        default_factory=list,
        max_length=120,
        description="After the down payment, dates increasing, each amount above zero. With "
        "the down payment they add up to what is owed less the waivers.",
    )
    waivers: WaiverRequest = Field(
        default_factory=WaiverRequest, description="Charges asked to be waived, as amounts."
    )
    note: str = Field(default="", max_length=500)

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "down_payment": {"due_at": "2099-01-05T00:00:00Z", "amount": "1000.00"},
                    "instalments": [
                        {"due_at": "2099-02-05T00:00:00Z", "amount": "4500.00"},
                        {"due_at": "2099-03-05T00:00:00Z", "amount": "4500.00"},
                    ],
                    "waivers": {"penalty_interest": "0"},
                    "note": "10% now, the rest within six months (borrower on the phone)",
                }
            ]
        }
    }


class RuleView(BaseModel):
    rule: str = Field(
        description="min_down_payment, max_term, waiver.<charge>, refuse_below_floor_share "
        "or unreasonable.below_floor_share"
    )
    detail: str


class ProposalTermsView(BaseModel):
    down_payment: PaymentTerms
    instalments: list[PaymentTerms]
    waivers: WaiverRequest


class ProposalAnswer(InCurrency):
    verdict: Literal["accepted", "countered", "refused"]
    currency: str
    floor: Amount = Field(description="The smallest down payment the applicable terms allow.")
    rules: list[RuleView] = Field(description="The policy's rules the proposal does not meet.")
    counter: ProposalTermsView | None = Field(
        description="Countered: the nearest terms the policy accepts, computed from the "
        "proposal. Proposed back, they are accepted."
    )
    approvable: bool = Field(
        description="Countered, but within the terms an approver (a supervisor) may agree to."
    )
    unreasonable: str | None = Field(
        description="Refused, and the rule by which the proposal is unreasonable: the case "
        "went to litigation (trigger proposal_unreasonable)."
    )
    case: CaseView


def _via(caller: Principal) -> str:
    if caller.has("cases:write"):
        return "portal"
    return "collector" if caller.has("collections:work") else "agency"


def _proposal(body: ProposalRequest, key: str, caller: Principal) -> m.SubmitProposal:
    return m.SubmitProposal(
        request_id=key,
        actor=caller.subject,
        via=_via(caller),
        down_payment=m.InstalmentTerms(body.down_payment.due_at, body.down_payment.amount),
        instalments=tuple(m.InstalmentTerms(i.due_at, i.amount) for i in body.instalments),
        waivers=m.Waivers(**body.waivers.model_dump()),
        note=body.note,
        groups=tuple(sorted(caller.groups)),
    )


def _check(proposal: m.SubmitProposal, case: Case, now: datetime) -> None:
    """Refuse a malformed proposal with every field that is wrong (422, nothing recorded)."""
    zone = ZoneInfo(case.borrower_time_zone)
    today: date = now.astimezone(zone).date()
    errors: list[tuple[tuple[str | int, ...], str]] = [
        (at, f"due before today ({today}) in the borrower's time zone {zone.key}")
        for at, due in (
            (("down_payment", "due_at"), proposal.down_payment.due_at),
            *((("instalments", i, "due_at"), p.due_at) for i, p in enumerate(proposal.instalments)),
        )
        if due.astimezone(zone).date() < today
    ]
    errors += n.problems(proposal, case.outstanding, case.currency)
    if errors:
        raise RequestValidationError(
            [{"loc": ("body", *at), "type": "value_error", "msg": why} for at, why in errors]
        )


def _terms(p: m.SubmitProposal) -> ProposalTermsView:
    return ProposalTermsView(
        down_payment=PaymentTerms(due_at=p.down_payment.due_at, amount=p.down_payment.amount),
        instalments=[PaymentTerms(due_at=i.due_at, amount=i.amount) for i in p.instalments],
        waivers=WaiverRequest(
            penalty_interest=p.waivers.penalty_interest,
            fees=p.waivers.fees,
            principal=p.waivers.principal,
        ),
    )


def _answer(outcome: Outcome, view: CaseView) -> ProposalAnswer:
    """The verdict as the decision put it on the timeline (domain/decide.py)."""
    entry = next(
        e
        for e in outcome.timeline
        if e.kind.startswith("proposal_") and e.kind != "proposal_received"
    )
    detail = entry.detail
    counter = detail.get("counter")
    return ProposalAnswer(
        verdict=entry.kind.removeprefix("proposal_"),
        currency=view.currency,
        floor=Decimal(detail["floor"]),
        rules=[RuleView(**r) for r in detail.get("rules") or ()],
        counter=ProposalTermsView.model_validate(
            {**counter, "waivers": counter.get("waivers") or {}}
        )
        if counter
        else None,
        approvable=bool(detail.get("approvable")),
        unreasonable=detail.get("unreasonable"),
        case=view,
    )


@router.post(
    "/cases/{loan_id}/proposals",
    response_model=ProposalAnswer,
    responses=_PROBLEMS,
    summary="Propose terms (down payment, instalments, waivers): accepted as the plan, "
    "countered, or refused by the negotiation policy",
)
async def propose(
    loan_id: LoanIdPath,
    body: ProposalRequest,
    request: Request,
    key: IdempotencyKey,
    caller: Proposer,
    uow: Reads,
) -> JSONResponse:
    clock: Clock = request.app.state.runtime.state["clock"]
    proposal = _proposal(body, key, caller)
    async with uow() as work:
        if proposal.via == "agency":
            await placed_with(work, loan_id, caller.subject)
        case = await work.cases.get(loan_id)
    if case is not None:
        _check(proposal, case, clock.now())
    return await _command(
        request,
        loan_id,
        key,
        caller.subject,
        body,
        lambda rid: _proposal(body, rid, caller),
        _answer,
    )
