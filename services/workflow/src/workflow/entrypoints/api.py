"""REST for internal systems: read a case and its timeline."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from collections_kit.money import Amount
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from collections_kit.runtime import EngineDep as Engine
from workflow.adapters.repository import CaseRepository

LoanIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", examples=["L-000123"])]


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


class CaseView(BaseModel):
    case_id: str
    loan_id: str
    borrower_id: str
    product: str
    stage: str
    status: str
    exit: str | None
    currency: str
    outstanding: Amount
    amount_overdue: Amount
    days_past_due: int
    jurisdiction: str
    borrower_time_zone: str
    policy_version: str
    opened_at: datetime
    updated_at: datetime
    intents: list[IntentView]


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


router = APIRouter(prefix="/v1", tags=["cases"])


def _not_found(loan_id: str) -> ProblemError:
    return ProblemError(404, "Case not found", f"No collections case for loan {loan_id}.",
                        type_="https://collections.example/problems/case-not-found")


@router.get("/cases/{loan_id}", response_model=CaseView, responses=PROBLEM_RESPONSES,
            summary="A case with its contact intents")
async def get_case(loan_id: LoanIdPath, engine: Engine) -> CaseView:
    async with engine.connect() as conn:
        repo = CaseRepository(conn)
        case = await repo.get(loan_id)
        if case is None:
            raise _not_found(loan_id)
        intents = await repo.intents_of(case.case_id)
    return CaseView(
        case_id=case.case_id, loan_id=case.loan_id, borrower_id=case.borrower_id,
        product=case.product, stage=case.stage.value, status=case.status.value,
        exit=case.exit.value if case.exit else None, currency=case.currency,
        outstanding=Decimal(case.outstanding), amount_overdue=Decimal(case.amount_overdue),
        days_past_due=case.days_past_due, jurisdiction=case.jurisdiction,
        borrower_time_zone=case.borrower_time_zone, policy_version=case.policy_version,
        opened_at=case.opened_at, updated_at=case.updated_at,
        intents=[IntentView(
            intent_id=i.intent_id, stage=i.stage.value, channel=i.channel,
            recipient=i.recipient, status=i.status.value, reason=i.reason,
            command_id=i.command_id, confirmation_id=i.confirmation_id,
            created_at=i.created_at) for i in intents],
    )


@router.get("/cases/{loan_id}/timeline", response_model=TimelinePage,
            responses=PROBLEM_RESPONSES, summary="Every audited step of a case, oldest first")
async def get_timeline(loan_id: LoanIdPath, engine: Engine,
                       after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                       limit: Annotated[int, Query(ge=1, le=500)] = 200) -> TimelinePage:
    async with engine.connect() as conn:
        repo = CaseRepository(conn)
        case = await repo.get(loan_id)
        if case is None:
            raise _not_found(loan_id)
        rows = await repo.timeline_of(case.case_id, after_id=after, limit=limit)
    entries = [TimelineEntryView(
        id=r.id, at=r.at, kind=r.kind, cause=r.cause, actor=r.actor,
        stage_before=r.stage_before, stage_after=r.stage_after, status_before=r.status_before,
        status_after=r.status_after, policy_version=r.policy_version, detail=r.detail,
    ) for r in rows]
    return TimelinePage(loan_id=loan_id, case_id=case.case_id, entries=entries,
                        next_after=entries[-1].id if len(entries) == limit else None)


@router.get("/summary", response_model=Summary, tags=["reports"],
            summary="Cases by status and stage, contact intents by status and reason")
async def get_summary(engine: Engine) -> Summary:
    async with engine.connect() as conn:
        return Summary(**await CaseRepository(conn).summary())
