"""REST: contact permits for people (collectors, agencies), and the results they report.

Who asks is taken from the token where it says so: a token with ``collections:agency`` is
that agency, one with ``collections:work`` is that collector (the subject is the id). A
token that says neither (a dialer or gateway acting for people) names the actor in the
body. Either way the answer says where the actor came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from collections_kit.auth import Principal, require
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from notifier.app.permits import ActorKindSource, PermitAnswer, PermitService
from notifier.domain.model import ActorKind, ChannelName, Recipient
from notifier.domain.permits import Permit, PermitAsk, PermitResult, Refused

_ID = r"^[A-Za-z0-9._:-]{1,64}$"
ActorId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,200}$")]
LoanId = Annotated[str, StringConstraints(pattern=_ID)]
PermitIdPath = Annotated[str, Path(pattern=_ID, examples=["permit-6f1c..."])]
Asker = Annotated[Principal, require("contacts:permit")]
_PROBLEMS = "https://collections.example/problems/"
# Scopes that say who the caller is (the workflow's collectors, the agencies).
AGENCY_SCOPE, COLLECTOR_SCOPE = "collections:agency", "collections:work"


class ActorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["collector", "agency"]
    id: ActorId


class PermitIn(BaseModel):
    """A person wants to contact a party about a loan, now."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"loan_id": "L-000123", "person": "debtor", "channel": "voice"}]
        },
    )

    loan_id: LoanId
    person: Recipient
    channel: ChannelName
    actor: ActorIn | None = Field(
        default=None,
        description="Who will make the contact. Taken from the token when it names a "
        "collector (collections:work) or an agency (collections:agency): then, if given, "
        "it must agree.",
    )


class ResultIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"result": "connected"}]}
    )

    result: PermitResult = Field(
        description="connected: someone answered, no conversation about the debt; "
        "unanswered; conversation: a conversation about the debt took place"
    )
    actor: ActorIn | None = Field(
        default=None, description="As for the permit: only its holder reports its result."
    )


class ActorView(BaseModel):
    kind: str
    id: str
    source: str = Field(description="Where the actor came from: token, body")


class PermitView(BaseModel):
    permit_id: str
    decision: Literal["granted", "refused"]
    loan_id: str
    person: str
    channel: str
    actor: ActorView
    reason: str = Field(description="all_checks_passed, or why the contact is refused")
    rule: str = Field(description="The rule that decided, as in the contact audit trail")
    detail: str = ""
    asked_at: datetime
    expires_at: datetime | None = Field(
        default=None, description="Granted: the contact must start before this"
    )
    result_by: datetime | None = Field(
        default=None, description="Granted: its result may be reported until this"
    )
    retry_after: datetime | None = Field(
        default=None, description="Refused for a reason the clock lifts: when to ask again"
    )
    result: str | None = None
    result_at: datetime | None = None
    confirmation_id: str | None = Field(
        default=None,
        description="The ledger confirmation the decision rested on: the last contact "
        "command's, or a fresher one",
    )


class PermitCount(BaseModel):
    decision: str
    reason: str
    actor_kind: str
    count: int


router = APIRouter(prefix="/v1")


def _service(request: Request) -> PermitService:
    service: PermitService = request.app.state.runtime.state["permits"]
    return service


def _actor(caller: Principal, body: ActorIn | None) -> tuple[ActorKind, str, ActorKindSource]:
    """Who the caller acts as: the token's word first, the body's otherwise."""
    kind: ActorKind | None = None
    if caller.has(AGENCY_SCOPE):
        kind = "agency"
    elif caller.has(COLLECTOR_SCOPE):
        kind = "collector"
    if kind is not None:
        if body is not None and (body.kind != kind or body.id != caller.subject):
            raise ProblemError(
                403,
                "Actor mismatch",
                f"The token names {kind} {caller.subject}; a permit is asked and reported "
                "only as oneself.",
                type_=_PROBLEMS + "actor-mismatch",
            )
        return kind, caller.subject, "token"
    if body is None:
        raise ProblemError(
            422,
            "Actor required",
            "The token names no collector or agency: say who will make the contact "
            "(actor: {kind, id}).",
            type_=_PROBLEMS + "actor-required",
        )
    return body.kind, body.id, "body"


def _view(permit: Permit) -> PermitView:
    return PermitView(
        permit_id=permit.permit_id,
        decision=permit.decision,
        loan_id=permit.loan_id,
        person=permit.recipient,
        channel=permit.channel,
        actor=ActorView(kind=permit.actor_kind, id=permit.actor_id, source=permit.actor_from),
        reason=permit.reason,
        rule=permit.rule,
        detail=permit.detail,
        asked_at=permit.asked_at,
        expires_at=permit.expires_at,
        result_by=permit.result_by,
        retry_after=permit.retry_after,
        result=permit.result,
        result_at=permit.result_at,
        confirmation_id=permit.confirmation_id,
    )


def _unrecorded(body: PermitIn, answer: PermitAnswer) -> ProblemError:
    """No case to contact about: a problem, and nothing stored."""
    decision = answer.decision
    assert isinstance(decision, Refused)
    if decision.reason == "case_unknown":
        return ProblemError(
            404,
            "Case unknown",
            f"No case is known for loan {body.loan_id}: the workflow has issued no contact "
            f"for it (reason case_unknown, rule {decision.rule}).",
            type_=_PROBLEMS + "case-unknown",
        )
    return ProblemError(
        409,
        "Case closed",
        f"The case of loan {body.loan_id} is closed ({decision.detail}): nobody may contact "
        f"about it (reason case_closed, rule {decision.rule}). Nothing was recorded.",
        type_=_PROBLEMS + "case-closed",
    )


@router.post(
    "/contact-permits",
    response_model=PermitView,
    status_code=201,
    responses={
        200: {"model": PermitView, "description": "Refused, with the reason and rule"},
        404: PROBLEM_RESPONSES[404],
        409: {**PROBLEM_RESPONSES[404], "description": "The case is closed"},
        422: PROBLEM_RESPONSES[422],
    },
    tags=["contact permits"],
    summary="Ask for a permit to contact a person now (granted 201, refused 200)",
)
async def ask_permit(
    request: Request, body: PermitIn, caller: Asker, response: Response
) -> PermitView:
    kind, actor_id, source = _actor(caller, body.actor)
    ask = PermitAsk(
        loan_id=body.loan_id,
        recipient=body.person,
        channel=body.channel,
        actor_kind=kind,
        actor_id=actor_id,
    )
    answer = await _service(request).ask(ask, kind_from=source)
    if not answer.recorded:
        raise _unrecorded(body, answer)
    decision = answer.decision
    refused = isinstance(decision, Refused)
    response.status_code = 200 if refused else 201
    return PermitView(
        permit_id=answer.permit_id,
        decision="refused" if refused else "granted",
        loan_id=body.loan_id,
        person=body.person,
        channel=body.channel,
        actor=ActorView(kind=kind, id=actor_id, source=source),
        reason=decision.reason if isinstance(decision, Refused) else "all_checks_passed",
        rule=decision.rule,
        detail=decision.detail if isinstance(decision, Refused) else "",
        asked_at=answer.asked_at,
        expires_at=answer.expires_at,
        result_by=answer.result_by,
        retry_after=decision.retry_after if isinstance(decision, Refused) else None,
        confirmation_id=answer.confirmation_id,
    )


@router.post(
    "/contact-permits/{permit_id}/result",
    response_model=PermitView,
    responses={
        404: PROBLEM_RESPONSES[404],
        409: {**PROBLEM_RESPONSES[404], "description": "Refused permit, or another result"},
        410: {**PROBLEM_RESPONSES[404], "description": "The result window has ended"},
        422: PROBLEM_RESPONSES[422],
    },
    tags=["contact permits"],
    summary="Report a permitted contact's result: it counts in the caps (once)",
)
async def report_result(
    request: Request, permit_id: PermitIdPath, body: ResultIn, caller: Asker
) -> PermitView:
    _, actor_id, _ = _actor(caller, body.actor)
    answer = await _service(request).result(permit_id, actor_id, body.result)
    permit = answer.permit
    match answer.check:
        case "unknown":
            raise ProblemError(
                404, "Unknown permit", f"No permit {permit_id}.", type_=_PROBLEMS + "unknown-permit"
            )
        case "not_yours":
            raise ProblemError(
                403,
                "Not your permit",
                "This permit was granted to another collector or agency: only its holder "
                "reports its result.",
                type_=_PROBLEMS + "not-your-permit",
            )
        case "not_granted":
            raise ProblemError(
                409,
                "Permit refused",
                "This permit was refused: no contact was allowed, so there is no result.",
                type_=_PROBLEMS + "permit-refused",
            )
        case "conflict":
            assert permit is not None
            raise ProblemError(
                409,
                "Result already recorded",
                f"This permit's result is recorded as {permit.result}; it counts once and "
                "is not changed.",
                type_=_PROBLEMS + "result-recorded",
            )
        case "expired":
            assert permit is not None
            raise ProblemError(
                410,
                "Permit expired",
                f"The permit's result could be reported until {permit.result_by}; since "
                "then the contact counts as one whose result is unknown (the worst case).",
                type_=_PROBLEMS + "permit-expired",
            )
    assert permit is not None
    return _view(permit)


@router.get(
    "/contact-permits",
    response_model=list[PermitView],
    responses={422: PROBLEM_RESPONSES[422]},
    tags=["contact permits"],
    summary="A loan's permits, granted and refused, oldest first",
)
async def list_permits(
    request: Request,
    _: Annotated[Principal, require("cases:read")],
    loan_id: Annotated[str, Query(pattern=_ID, examples=["L-000123"])],
) -> list[PermitView]:
    return [_view(p) for p in await _service(request).of_loan(loan_id)]


@router.get(
    "/contact-permits/summary",
    response_model=list[PermitCount],
    tags=["reports"],
    summary="Permits by decision, reason and actor kind",
)
async def permit_summary(
    request: Request, _: Annotated[Principal, require("admin")]
) -> list[PermitCount]:
    return [
        PermitCount(decision=d, reason=r, actor_kind=k, count=n)
        for d, r, k, n in await _service(request).summary()
    ]
