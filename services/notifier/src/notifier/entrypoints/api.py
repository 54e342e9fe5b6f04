"""REST: borrowers' contact details (in, and out only masked), their contact preferences
(opt-outs per channel, do-not-contact), and the contact decisions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from collections_kit.auth import Principal, require
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from notifier.adapters.uow import SqlNotifierUnitOfWork
from notifier.domain.masking import mask_email, mask_phone, mask_text
from notifier.domain.model import ChannelName, ContactDetails, Party, Recipient


def _uow(request: Request) -> Callable[[], SqlNotifierUnitOfWork]:
    start: Callable[[], SqlNotifierUnitOfWork] = request.app.state.runtime.state["uow"]
    return start


# One transaction per request (a read's is rolled back, having written nothing).
Work = Annotated[Callable[[], SqlNotifierUnitOfWork], Depends(_uow)]
Reader = Annotated[Principal, require("cases:read")]
ContactsWriter = Annotated[Principal, require("contacts:write")]
Admin = Annotated[Principal, require("admin")]
_ID = r"^[A-Za-z0-9._:-]{1,64}$"
BorrowerIdPath = Annotated[str, Path(pattern=_ID, examples=["B-000123"])]

# Shape only: deliverability is the relay's business. No control character or space
# anywhere, which also keeps header injection out of the SMTP envelope. Spelled as byte
# ranges, not \s: the server's regex engine and Python's disagree on what \s covers, and
# the published schema must mean what the server checks.
_ADDR = r"[^@\x00-\x20\x7f]+"
Email = Annotated[str, StringConstraints(max_length=254, pattern=rf"^{_ADDR}@{_ADDR}\.{_ADDR}$")]
# E.164: a plus, a country code not starting with 0, at most 15 digits in all.
Phone = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{1,14}$")]
# No silent stripping: what the schema says is what is accepted (a stripped 501-character
# value would pass a 500-character limit), but blanks alone are refused.
_VISIBLE = r"^[ \t\r\n]*[^ \t\r\n][\s\S]*$"
PostalAddress = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_VISIBLE)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_VISIBLE)]


class GuarantorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email | None = None
    phone: Phone | None = None
    postal_address: PostalAddress | None = None


class ContactDetailsIn(BaseModel):
    """The borrower's contact details; replaces what was stored before."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "language": "zh-CN",
                    "email": "zhang.san@example.com",
                    "phone": "+8613812341234",
                    "postal_address": "北京市朝阳区某路 1 号",
                    "guarantor": {"name": "李四", "phone": "+8613912345678"},
                }
            ]
        },
    )

    language: Literal["zh-CN", "en"]
    email: Email | None = None
    phone: Phone | None = None
    postal_address: PostalAddress | None = None
    guarantor: GuarantorIn | None = None


class GuarantorView(BaseModel):
    name: str
    email: str | None
    phone: str | None
    postal_address: str | None


class ContactDetailsView(BaseModel):
    """Masked (enough to recognise the details, not to use them) unless the caller holds
    the ``pii:read`` scope."""

    borrower_id: str
    language: str
    email: str | None
    phone: str | None
    postal_address: str | None
    guarantor: GuarantorView | None
    updated_at: datetime
    masked: bool = Field(description="Whether the personal data above is masked.")


class DecisionView(BaseModel):
    id: int
    command_id: str
    channel: str
    recipient: str
    decision: str
    reason: str
    rule: str
    at: datetime
    # For a deferral: when the contact is tried again.
    due_at: datetime | None
    # For a send: what the channel reported (sent, delivered, answered, unanswered).
    delivery: str | None = None


class ContactsPage(BaseModel):
    loan_id: str
    decisions: list[DecisionView]
    next_after: int | None


class DecisionCount(BaseModel):
    decision: str
    reason: str
    rule: str
    count: int


class Summary(BaseModel):
    by_decision: list[DecisionCount] = Field(
        description="Decisions taken, by outcome, reason and rule"
    )
    totals: dict[str, int] = Field(description="Decisions taken, by outcome")
    dispatches: dict[str, int] = Field(description="Contact commands by current status")


PartyName = Recipient
ChannelPath = Annotated[ChannelName, Path()]
PartyQuery = Annotated[PartyName, Query(description="Whose wish: the debtor's or the guarantor's")]
Reason = Annotated[str, StringConstraints(max_length=500)]


class OptOutIn(BaseModel):
    """The person asked to receive nothing more on this channel."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"party": "debtor", "reason": "replied STOP to a text message"}]
        },
    )

    party: PartyName = "debtor"
    reason: Reason = ""


class DoNotContactIn(BaseModel):
    """The person asked for no contact at all (on any channel)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"party": "debtor", "reason": "written request to cease communication"}]
        },
    )

    party: PartyName = "debtor"
    reason: Reason = ""


class OptOutView(BaseModel):
    party: str
    channel: str
    reason: str
    created_at: datetime


class DoNotContactView(BaseModel):
    party: str
    reason: str
    created_at: datetime


class PreferencesView(BaseModel):
    borrower_id: str
    opt_outs: list[OptOutView]
    do_not_contact: list[DoNotContactView]


router = APIRouter(prefix="/v1")
# Routes that never answer 404 advertise only the validation problem.
INVALID_ONLY: dict[int | str, dict[str, Any]] = {422: PROBLEM_RESPONSES[422]}


def _masked(value: str | None) -> str | None:
    return None if value is None else mask_text(value)


@router.put(
    "/borrowers/{borrower_id}/contact-details",
    status_code=204,
    responses=INVALID_ONLY,
    tags=["contact details"],
    summary="Store (replace) a borrower's contact details",
)
async def put_contact_details(
    borrower_id: BorrowerIdPath,
    body: ContactDetailsIn,
    uow: Work,
    _: ContactsWriter,
) -> Response:
    g = body.guarantor
    details = ContactDetails(
        borrower_id=borrower_id,
        language=body.language,
        debtor=Party(email=body.email, phone=body.phone, postal_address=body.postal_address),
        guarantor=Party(name=g.name, email=g.email, phone=g.phone, postal_address=g.postal_address)
        if g
        else None,
    )
    async with uow() as work:
        await work.contact_details.put(details, now=work.now)
        await work.commit()
    return Response(status_code=204)


@router.get(
    "/borrowers/{borrower_id}/contact-details",
    response_model=ContactDetailsView,
    responses=PROBLEM_RESPONSES,
    tags=["contact details"],
    summary="A borrower's contact details: masked, or in full with pii:read",
)
async def get_contact_details(
    borrower_id: BorrowerIdPath, uow: Work, caller: Reader
) -> ContactDetailsView:
    async with uow() as work:
        found = await work.contact_details.get(borrower_id)
    if found is None:
        raise ProblemError(
            404,
            "No contact details",
            f"No contact details are stored for borrower {borrower_id}.",
            type_="https://collections.example/problems/no-contact-details",
        )
    details, updated_at = found
    g = details.guarantor
    if caller.has("pii:read"):
        return ContactDetailsView(
            borrower_id=borrower_id,
            language=details.language,
            email=details.debtor.email,
            phone=details.debtor.phone,
            postal_address=details.debtor.postal_address,
            guarantor=GuarantorView(
                name=g.name or "", email=g.email, phone=g.phone, postal_address=g.postal_address
            )
            if g
            else None,
            updated_at=updated_at,
            masked=False,
        )
    return ContactDetailsView(
        borrower_id=borrower_id,
        language=details.language,
        email=mask_email(details.debtor.email) if details.debtor.email else None,
        phone=mask_phone(details.debtor.phone) if details.debtor.phone else None,
        postal_address=_masked(details.debtor.postal_address),
        guarantor=GuarantorView(
            name=mask_text(g.name or "", keep=1),
            email=mask_email(g.email) if g.email else None,
            phone=mask_phone(g.phone) if g.phone else None,
            postal_address=_masked(g.postal_address),
        )
        if g
        else None,
        updated_at=updated_at,
        masked=True,
    )


@router.put(
    "/borrowers/{borrower_id}/opt-outs/{channel}",
    status_code=204,
    responses=INVALID_ONLY,
    tags=["contact preferences"],
    summary="Opt a person out of one channel; pending contacts on it are blocked",
)
async def put_opt_out(
    borrower_id: BorrowerIdPath,
    channel: ChannelPath,
    body: OptOutIn,
    uow: Work,
    _: ContactsWriter,
) -> Response:
    async with uow() as work:
        await work.preferences.opt_out(
            borrower_id, body.party, channel, reason=body.reason, now=work.now
        )
        await work.commit()
    return Response(status_code=204)


@router.delete(
    "/borrowers/{borrower_id}/opt-outs/{channel}",
    status_code=204,
    responses=PROBLEM_RESPONSES,
    tags=["contact preferences"],
    summary="Withdraw an opt-out (the person agreed to the channel again)",
)
async def delete_opt_out(
    borrower_id: BorrowerIdPath,
    channel: ChannelPath,
    uow: Work,
    _: ContactsWriter,
    party: PartyQuery = "debtor",
) -> Response:
    async with uow() as work:
        found = await work.preferences.opt_in(borrower_id, party, channel)
        await work.commit()
    if not found:
        raise ProblemError(
            404, "No such opt-out", f"No {channel} opt-out is stored for this {party}."
        )
    return Response(status_code=204)


@router.put(
    "/borrowers/{borrower_id}/do-not-contact",
    status_code=204,
    responses=INVALID_ONLY,
    tags=["contact preferences"],
    summary="Stop all contact with a person; pending contacts are blocked",
)
async def put_do_not_contact(
    borrower_id: BorrowerIdPath, body: DoNotContactIn, uow: Work, _: ContactsWriter
) -> Response:
    async with uow() as work:
        await work.preferences.stop_all(borrower_id, body.party, reason=body.reason, now=work.now)
        await work.commit()
    return Response(status_code=204)


@router.delete(
    "/borrowers/{borrower_id}/do-not-contact",
    status_code=204,
    responses=PROBLEM_RESPONSES,
    tags=["contact preferences"],
    summary="Lift a do-not-contact",
)
async def delete_do_not_contact(
    borrower_id: BorrowerIdPath, uow: Work, _: ContactsWriter, party: PartyQuery = "debtor"
) -> Response:
    async with uow() as work:
        found = await work.preferences.allow(borrower_id, party)
        await work.commit()
    if not found:
        raise ProblemError(
            404, "No do-not-contact", f"No do-not-contact is stored for this {party}."
        )
    return Response(status_code=204)


@router.get(
    "/borrowers/{borrower_id}/contact-preferences",
    response_model=PreferencesView,
    responses=INVALID_ONLY,
    tags=["contact preferences"],
    summary="A person's opt-outs and do-not-contact",
)
async def get_preferences(borrower_id: BorrowerIdPath, uow: Work, _: Reader) -> PreferencesView:
    async with uow() as work:
        opt_outs, stops = await work.preferences.of(borrower_id)
    return PreferencesView(
        borrower_id=borrower_id,
        opt_outs=[
            OptOutView(party=r.party, channel=r.channel, reason=r.reason, created_at=r.created_at)
            for r in opt_outs
        ],
        do_not_contact=[
            DoNotContactView(party=r.party, reason=r.reason, created_at=r.created_at) for r in stops
        ],
    )


@router.get(
    "/contacts",
    response_model=ContactsPage,
    responses=INVALID_ONLY,
    tags=["contacts"],
    summary="Every decision taken on a loan's contacts, oldest first",
)
async def get_contacts(
    uow: Work,
    _: Reader,
    loan_id: Annotated[str, Query(pattern=_ID, examples=["L-000123"])],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> ContactsPage:
    async with uow() as work:
        rows = await work.dispatches.decisions_of(loan_id, after_id=after, limit=limit)
    decisions = [
        DecisionView(
            id=r.id,
            command_id=r.command_id,
            channel=r.channel,
            recipient=r.recipient,
            decision=r.decision,
            reason=r.reason,
            rule=r.rule,
            at=r.at,
            due_at=r.due_at,
            delivery=r.delivery,
        )
        for r in rows
    ]
    return ContactsPage(
        loan_id=loan_id,
        decisions=decisions,
        next_after=decisions[-1].id if len(decisions) == limit else None,
    )


@router.get(
    "/contacts/summary",
    response_model=Summary,
    tags=["reports"],
    summary="Decisions by outcome and reason; commands by status",
)
async def get_summary(uow: Work, _: Admin) -> Summary:
    async with uow() as work:
        return Summary(**await work.dispatches.summary())
