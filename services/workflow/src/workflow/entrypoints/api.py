"""REST for internal systems: read cases, put them on hold, record arrangements, escalate,
record legal milestones, close. Writes are idempotent (``Idempotency-Key``) and every
error is an RFC 9457 problem document."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    model_validator,
)

from collections_kit.auth import Principal, require
from collections_kit.clock import Clock
from collections_kit.contract import Score
from collections_kit.contract import Stage as StageName
from collections_kit.money import Amount, InCurrency, NonNegativeAmount
from collections_kit.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from workflow.adapters.uow import SqlWorkflowUnitOfWork
from workflow.app.commands import Commands, KeyReusedError, Outcome
from workflow.app.ports import CaseStore
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.model import Arrangement, Case, ContactIntent

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339(value: Any) -> Any:
    # pydantic would also take a number as Unix time; the contract says RFC 3339 text.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("expected an RFC 3339 date-time with an offset")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
LoanIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["L-000123"])]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Unique per intended change; a retry with the same key replays the answer.",
        examples=["0b6c6d0e-5a53-4a4e-9d7e-3f0a4c1d2e71"],
    ),
]
# The caller, from its bearer token; the token's subject is the actor on the timeline.
Reader = Annotated[Principal, require("cases:read")]
Writer = Annotated[Principal, require("cases:write")]
Admin = Annotated[Principal, require("admin")]


def _reads(request: Request) -> Callable[[], SqlWorkflowUnitOfWork]:
    # A unit of work that is never committed: the reads' transaction, rolled back after.
    start: Callable[[], SqlWorkflowUnitOfWork] = request.app.state.runtime.state["uow"]
    return start


Reads = Annotated[Callable[[], SqlWorkflowUnitOfWork], Depends(_reads)]
# Blanks do not count: a reason needs at least three visible characters.
Reason = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=500, pattern=r"^(?:[ \t\r\n]*[^ \t\r\n]){3}[\s\S]*$"
    ),
    Field(examples=["borrower hospitalised; documents received"]),
]

CASE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    409: {
        "model": Problem,
        "description": "Not allowed in the case's current phase",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


class IntentView(BaseModel):
    intent_id: str
    stage: str
    channel: str
    recipient: str
    status: str
    reason: str
    command_id: str | None
    confirmation_id: str | None
    created_at: datetime


class ContactMadeView(BaseModel):
    command_id: str
    intent_id: str | None
    channel: str | None
    outcome: str = Field(
        description="The first outcome reported: sent, delivered, "
        "answered, unanswered, or in_doubt (it may have "
        "reached the borrower)."
    )
    occurred_at: datetime


class HoldView(BaseModel):
    hold_id: str
    kind: str
    reason: str
    actor: str
    started_at: datetime = Field(description="When the hold was recorded.")
    until: datetime | None
    effective_from: datetime = Field(
        description="When the hold took effect: before started_at when it was backdated."
    )
    contacts_during_hold: list[ContactMadeView] = Field(
        default_factory=list,
        description="Contacts made while the hold was in effect (for a backdated hold, "
        "before it was recorded), as the notifier reported them.",
    )


class InstalmentView(BaseModel):
    due_at: datetime
    amount: Amount


class ArrangementView(BaseModel):
    arrangement_id: str
    kind: str
    schedule: list[InstalmentView]
    total: Amount
    paid: Amount
    interest_reduction: Amount | None
    note: str
    outcome: Literal["kept", "completed", "broken", "repaid", "cancelled"] | None = Field(
        default=None, description="How it ended; null while it runs."
    )
    ended_at: datetime | None = None


class PreDelinquencyView(BaseModel):
    signal_id: str = Field(description="The risk signal that opened the pre-delinquency.")
    kind: str
    score: Score
    observed_at: datetime
    valid_until: datetime = Field(
        description="The case ends by itself then, unless a later signal extends it."
    )


class CaseView(InCurrency):
    case_id: str
    loan_id: str
    borrower_id: str
    product: str
    stage: str
    status: str
    phase: str
    exit: str | None
    currency: str
    outstanding: Amount
    amount_overdue: Amount
    days_past_due: int
    jurisdiction: str
    borrower_time_zone: str
    policy_version: str
    variant: str = Field(
        default="",
        description="The champion-challenger variant of the product's policy assigned "
        "when the case opened and kept for life; every decision on the case is taken "
        'under it ("": the product has no variants).',
    )
    opened_at: datetime
    updated_at: datetime
    stage_entered_at: datetime | None
    hold: HoldView | None
    arrangement: ArrangementView | None
    last_arrangement: ArrangementView | None = Field(
        default=None,
        description="The arrangement that ended last, with its outcome and "
        "what was paid towards it.",
    )
    milestones: list[str]
    unanswered_contacts: int
    refused_proposals: list[datetime] = Field(
        default_factory=list,
        description="When proposals were refused, within the negotiation policy's period: "
        "at its count the proposal is unreasonable and the case goes to litigation.",
    )
    next_action_at: datetime | None
    intents: list[IntentView]
    pre_delinquency: PreDelinquencyView | None = Field(
        default=None,
        description="Early warning: the risk signal a pre-delinquency case (phase "
        "`pre_delinquency`: the loan is not overdue) rests on; kept on a case that ended "
        "so, null on an ordinary case (docs/early-warning.md).",
    )


class CaseSummaryView(InCurrency):
    case_id: str
    loan_id: str
    stage: str
    status: str
    phase: str
    days_past_due: int
    outstanding: Amount
    currency: str
    next_action_at: datetime | None


class CasePage(BaseModel):
    cases: list[CaseSummaryView]
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class TimelineEntryView(BaseModel):
    id: int
    at: datetime
    kind: str
    cause: str
    actor: str
    stage_before: str | None
    stage_after: str | None
    status_before: str | None
    status_after: str | None
    policy_version: str
    detail: dict[str, Any]


class TimelinePage(BaseModel):
    loan_id: str
    case_id: str
    entries: list[TimelineEntryView]
    next_after: int | None


class Summary(BaseModel):
    cases: list[dict[str, Any]]
    intents: list[dict[str, Any]]


class HoldRequest(BaseModel):
    kind: Literal["hardship", "dispute", "breathing_space", "operator"]
    reason: Reason
    until: Timestamp | None = Field(
        default=None,
        description="Ends the hold by itself, with a fresh ledger confirmation "
        "before any contact. Breathing space always ends within "
        "its legal length (60 days from effective_from) even if "
        "not given.",
    )
    effective_from: Timestamp | None = Field(
        default=None,
        description="When the hold took effect, not in the future (default: "
        "now). A breathing space starts on the day debt advice was "
        "applied for, which can be days before the lender hears "
        "of it; contacts made since are listed on the case.",
    )

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> HoldRequest:
        if (
            self.until is not None
            and self.effective_from is not None
            and self.until <= self.effective_from
        ):
            raise ValueError("until must be later than effective_from")
        return self


class ResumeRequest(BaseModel):
    reason: Reason
    verification_outcome: str | None = Field(
        default=None,
        max_length=500,
        description="Required to resume a disputed debt: what the verification found.",
        examples=["statement and contract sent; debt confirmed"],
    )


class InstalmentRequest(BaseModel):
    due_at: Timestamp
    amount: NonNegativeAmount


class ArrangementRequest(BaseModel):
    kind: Literal["promise_to_pay", "instalment_plan"]
    schedule: list[InstalmentRequest] = Field(min_length=1, max_length=120)
    interest_reduction: NonNegativeAmount | None = Field(
        default=None, description="Recorded for the record; the ledger books it."
    )
    note: str = Field(default="", max_length=500)

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "kind": "instalment_plan",
                    "interest_reduction": "1200.00",
                    "note": "10% now, the rest over 6 months",
                    # Far ahead: the committed document must neither change nor go stale with the
                    # calendar, and a past date is refused (tested: the example is accepted).
                    "schedule": [
                        {"due_at": "2099-01-23T00:00:00Z", "amount": "5000.00"},
                        {"due_at": "2099-02-23T00:00:00Z", "amount": "7500.00"},
                    ],
                }
            ]
        }
    }


class EscalationRequest(BaseModel):
    kind: Literal["manual", "fraud", "proposal_unreasonable"]
    reason: Reason


class MilestoneRequest(BaseModel):
    milestone: Literal["registered", "reviewed", "suit_filed", "judgment", "enforcement_applied"]
    reference: str = Field(min_length=1, max_length=200, examples=["(2026) Hu 0101 Min Chu 123"])
    note: str = Field(default="", max_length=500)


class ClosureRequest(BaseModel):
    exit: Literal["settled", "written_off", "closed"]
    reason: Reason


router = APIRouter(prefix="/v1", tags=["cases"])


def _not_found(loan_id: str) -> ProblemError:
    return ProblemError(
        404,
        "Case not found",
        f"No collections case for loan {loan_id}.",
        type_="https://collections.example/problems/case-not-found",
    )


def _arrangement_view(a: Arrangement) -> ArrangementView:
    return ArrangementView(
        arrangement_id=a.arrangement_id,
        kind=a.kind.value,
        schedule=[InstalmentView(due_at=i.due_at, amount=i.amount) for i in a.schedule],
        total=a.total,
        paid=a.paid,
        interest_reduction=a.interest_reduction,
        note=a.note,
        outcome=a.outcome,
        ended_at=a.ended_at,
    )


def _case_view(
    case: Case,
    intents: list[ContactIntent],
    next_action_at: datetime | None,
    contacts_during_hold: list[dict[str, Any]] | None = None,
) -> CaseView:
    a = case.arrangement
    return CaseView(
        case_id=case.case_id,
        loan_id=case.loan_id,
        borrower_id=case.borrower_id,
        product=case.product,
        stage=case.stage.value,
        status=case.status.value,
        phase=case.phase.value,
        exit=case.exit.value if case.exit else None,
        currency=case.currency,
        outstanding=Decimal(case.outstanding),
        amount_overdue=Decimal(case.amount_overdue),
        days_past_due=case.days_past_due,
        jurisdiction=case.jurisdiction,
        borrower_time_zone=case.borrower_time_zone,
        policy_version=case.policy_version,
        variant=case.variant,
        opened_at=case.opened_at,
        updated_at=case.updated_at,
        stage_entered_at=case.stage_entered_at,
        hold=HoldView(
            hold_id=case.hold.hold_id,
            kind=case.hold.kind.value,
            reason=case.hold.reason,
            actor=case.hold.actor,
            started_at=case.hold.started_at,
            until=case.hold.until,
            effective_from=case.hold.since,
            contacts_during_hold=[ContactMadeView(**c) for c in contacts_during_hold or ()],
        )
        if case.hold
        else None,
        arrangement=_arrangement_view(a) if a else None,
        last_arrangement=_arrangement_view(case.last_arrangement)
        if case.last_arrangement
        else None,
        milestones=list(case.milestones),
        unanswered_contacts=case.unanswered_contacts,
        refused_proposals=list(case.refused_proposals),
        pre_delinquency=PreDelinquencyView(
            signal_id=case.pre_delinquency.signal_id,
            kind=case.pre_delinquency.kind,
            score=case.pre_delinquency.score,
            observed_at=case.pre_delinquency.observed_at,
            valid_until=case.pre_delinquency.valid_until,
        )
        if case.pre_delinquency
        else None,
        next_action_at=next_action_at,
        intents=[
            IntentView(
                intent_id=i.intent_id,
                stage=i.stage.value,
                channel=i.channel,
                recipient=i.recipient,
                status=i.status.value,
                reason=i.reason,
                command_id=i.command_id,
                confirmation_id=i.confirmation_id,
                created_at=i.created_at,
            )
            for i in intents
        ],
    )


@router.get(
    "/cases",
    response_model=CasePage,
    responses=PROBLEM_RESPONSES,
    summary="List cases, filtered, in loan-id order (keyset pagination)",
)
async def list_cases(
    uow: Reads,
    _: Reader,
    stage: Annotated[StageName | None, Query()] = None,
    status: Annotated[Literal["open", "held", "closed"] | None, Query()] = None,
    dpd_min: Annotated[int | None, Query(ge=0, le=36500)] = None,
    dpd_max: Annotated[int | None, Query(ge=0, le=36500)] = None,
    next_action_before: Annotated[Timestamp | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> CasePage:
    async with uow() as work:
        repo = work.cases
        found = await repo.list_cases(
            stage=stage,
            status=status,
            dpd_min=dpd_min,
            dpd_max=dpd_max,
            next_action_before=next_action_before,
            after=after,
            limit=limit,
        )
        next_actions = await repo.next_actions([c.case_id for c in found])
    return CasePage(
        cases=[
            CaseSummaryView(
                case_id=c.case_id,
                loan_id=c.loan_id,
                stage=c.stage.value,
                status=c.status.value,
                phase=c.phase.value,
                days_past_due=c.days_past_due,
                outstanding=c.outstanding,
                currency=c.currency,
                next_action_at=next_actions.get(c.case_id),
            )
            for c in found
        ],
        next_after=found[-1].loan_id if len(found) == limit else None,
    )


@router.get(
    "/cases/{loan_id}",
    response_model=CaseView,
    responses=PROBLEM_RESPONSES,
    summary="A case with its hold, arrangement and contact intents",
)
async def get_case(loan_id: LoanIdPath, uow: Reads, _: Reader) -> CaseView:
    async with uow() as work:
        repo = work.cases
        case = await repo.get(loan_id)
        if case is None:
            raise _not_found(loan_id)
        intents = await repo.intents_of(case.case_id)
        next_action = (await repo.next_actions([case.case_id])).get(case.case_id)
        during = await repo.contacts_made_during(case.case_id, case.hold) if case.hold else []
    return _case_view(case, intents, next_action, during)


@router.get(
    "/cases/{loan_id}/timeline",
    response_model=TimelinePage,
    responses=PROBLEM_RESPONSES,
    summary="Every audited step of a case, oldest first",
)
async def get_timeline(
    loan_id: LoanIdPath,
    uow: Reads,
    _: Reader,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> TimelinePage:
    async with uow() as work:
        repo = work.cases
        case = await repo.get(loan_id)
        if case is None:
            raise _not_found(loan_id)
        rows = await repo.timeline_of(case.case_id, after_id=after, limit=limit)
    entries = [
        TimelineEntryView(
            id=r.id,
            at=r.at,
            kind=r.kind,
            cause=r.cause,
            actor=r.actor,
            stage_before=r.stage_before,
            stage_after=r.stage_after,
            status_before=r.status_before,
            status_after=r.status_after,
            policy_version=r.policy_version,
            detail=r.detail,
        )
        for r in rows
    ]
    return TimelinePage(
        loan_id=loan_id,
        case_id=case.case_id,
        entries=entries,
        next_after=entries[-1].id if len(entries) == limit else None,
    )


@router.get(
    "/summary",
    response_model=Summary,
    tags=["reports"],
    summary="Cases by status and stage, contact intents by status and reason",
)
async def get_summary(uow: Reads, _: Admin) -> Summary:
    async with uow() as work:
        return Summary(**await work.cases.summary())


# --- writes --------------------------------------------------------------------------------


async def _command(
    request: Request,
    loan_id: str,
    key: str,
    actor: str,
    body: BaseModel,
    make: Any,
    answer: Callable[[Outcome, CaseView], BaseModel] | None = None,
) -> JSONResponse:
    """Run the command; answer with the case, or with what ``answer`` makes of the outcome
    and the case (a proposal's verdict)."""
    commands: Commands = request.app.state.runtime.state["commands"]

    async def render(outcome: Outcome, repo: CaseStore) -> dict[str, Any]:
        if outcome.problem is not None:
            title = "Case not found" if outcome.status == 404 else "Not allowed now"
            return Problem(
                title=title,
                status=outcome.status,
                detail=outcome.problem,
                instance=str(request.url.path),
            ).model_dump(exclude_none=True)
        assert outcome.case is not None
        intents = await repo.intents_of(outcome.case.case_id)
        hold = outcome.case.hold
        during = await repo.contacts_made_during(outcome.case.case_id, hold) if hold else []
        view = _case_view(outcome.case, intents, None, during)
        return (answer(outcome, view) if answer else view).model_dump(mode="json")

    try:
        status, payload = await commands.handle(
            loan_id=loan_id,
            key=key,
            route=request.url.path,
            body=body.model_dump(mode="json"),
            actor=actor,
            make=make,
            render=render,
        )
    except KeyReusedError as exc:
        raise ProblemError(
            422, "Idempotency-Key reused", "This key was used for a different request."
        ) from exc
    media = PROBLEM_JSON if status >= 400 else "application/json"
    return JSONResponse(payload, status_code=status, media_type=media)


@router.post(
    "/cases/{loan_id}/holds",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Put a case on hold (hardship, dispute, breathing space, operator)",
)
async def hold_case(
    loan_id: LoanIdPath, body: HoldRequest, request: Request, key: IdempotencyKey, caller: Writer
) -> JSONResponse:
    actor = caller.subject
    clock: Clock = request.app.state.runtime.state["clock"]
    if body.effective_from is not None and body.effective_from > clock.now():
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "effective_from"),
                    "type": "value_error",
                    "msg": "a hold cannot take effect in the future",
                }
            ]
        )
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RequestHold(
            request_id=rid,
            kind=body.kind,
            reason=body.reason,
            actor=actor,
            until=body.until,
            effective_from=body.effective_from,
        ),
    )


@router.post(
    "/cases/{loan_id}/resume",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Resume a held case; contacts wait for a fresh ledger confirmation",
)
async def resume_case(
    loan_id: LoanIdPath, body: ResumeRequest, request: Request, key: IdempotencyKey, caller: Writer
) -> JSONResponse:
    actor = caller.subject
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RequestResume(
            request_id=rid,
            reason=body.reason,
            actor=actor,
            verification_outcome=body.verification_outcome,
        ),
    )


@router.post(
    "/cases/{loan_id}/arrangements",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Record a promise to pay or an instalment plan",
)
async def record_arrangement(
    loan_id: LoanIdPath,
    body: ArrangementRequest,
    request: Request,
    key: IdempotencyKey,
    caller: Writer,
    uow: Reads,
) -> JSONResponse:
    actor = caller.subject
    clock: Clock = request.app.state.runtime.state["clock"]
    async with uow() as work:
        case = await work.cases.get(loan_id)
    if case is not None:
        # A payment due before today where the borrower lives is already missed: the
        # timer would break the arrangement at once and escalate the case.
        today = clock.now().astimezone(ZoneInfo(case.borrower_time_zone)).date()
        past = [
            i
            for i, due in enumerate(body.schedule)
            if due.due_at.astimezone(ZoneInfo(case.borrower_time_zone)).date() < today
        ]
        if past:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "schedule", i, "due_at"),
                        "type": "value_error",
                        "msg": f"due before today ({today}) in the borrower's time zone "
                        f"{case.borrower_time_zone}",
                    }
                    for i in past
                ]
            )
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RecordArrangement(
            request_id=rid,
            kind=body.kind,
            actor=actor,
            schedule=tuple(m.InstalmentTerms(i.due_at, i.amount) for i in body.schedule),
            interest_reduction=body.interest_reduction,
            note=body.note,
        ),
    )


@router.post(
    "/cases/{loan_id}/escalations",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Escalate: one stage (manual), or to litigation (fraud, unreasonable proposal)",
)
async def escalate_case(
    loan_id: LoanIdPath,
    body: EscalationRequest,
    request: Request,
    key: IdempotencyKey,
    caller: Writer,
) -> JSONResponse:
    actor = caller.subject
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RequestEscalation(
            request_id=rid, kind=body.kind, reason=body.reason, actor=actor
        ),
    )


@router.post(
    "/cases/{loan_id}/legal-milestones",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Record a legal milestone (legal department)",
)
async def record_milestone(
    loan_id: LoanIdPath,
    body: MilestoneRequest,
    request: Request,
    key: IdempotencyKey,
    caller: Writer,
) -> JSONResponse:
    actor = caller.subject
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RecordLegalMilestone(
            request_id=rid,
            milestone=body.milestone,
            reference=body.reference,
            actor=actor,
            note=body.note,
        ),
    )


@router.post(
    "/cases/{loan_id}/closure",
    response_model=CaseView,
    responses=CASE_PROBLEMS,
    summary="Close a case: settled, written off, or closed by an operator",
)
async def close_case(
    loan_id: LoanIdPath, body: ClosureRequest, request: Request, key: IdempotencyKey, caller: Writer
) -> JSONResponse:
    actor = caller.subject
    return await _command(
        request,
        loan_id,
        key,
        actor,
        body,
        lambda rid: m.RequestClosure(
            request_id=rid, exit=body.exit, reason=body.reason, actor=actor
        ),
    )


__all__ = ["d", "router"]
