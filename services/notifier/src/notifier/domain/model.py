"""What the notifier knows when it decides about one contact, in domain terms.

Mapped from the wire (``ContactCommand`` and friends) and from the tables at the edge; the
decision function sees only these types. Personal data (addresses, names) is kept out of
``repr`` so that an object logged by accident does not leak it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

Recipient = Literal["debtor", "guarantor"]
ChannelName = Literal["sms", "voice", "email", "letter"]
Language = Literal["zh-CN", "en"]
Outcome = Literal["sent", "deferred", "blocked", "cancelled", "failed"]


class DispatchStatus(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    # Handed to a channel; the external call may or may not have happened. A row left here
    # past its lease is picked up again (see the dispatcher).
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


# Statuses the dispatcher still has work for; everything else is final.
OPEN_STATUSES: tuple[DispatchStatus, ...] = (
    DispatchStatus.PENDING, DispatchStatus.DEFERRED, DispatchStatus.SENDING)
# Statuses a workflow cancellation still reaches: once handed to a channel it is too late.
CANCELLABLE_STATUSES: tuple[DispatchStatus, ...] = (DispatchStatus.PENDING,
                                                    DispatchStatus.DEFERRED)


@dataclass(frozen=True)
class ContactRequest:
    """One contact command as the workflow issued it (after a ledger confirmation)."""

    command_id: str
    intent_id: str
    case_id: str
    loan_id: str
    borrower_id: str
    recipient: Recipient
    channel: ChannelName
    stage: str
    template: str
    currency: str
    amount_due: Decimal
    confirmation_id: str
    ledger_watermark: int
    confirmed_at: datetime
    confirmation_valid_until: datetime
    borrower_time_zone: str
    jurisdiction: str
    issued_at: datetime


@dataclass(frozen=True)
class Party:
    """How to reach one person. Every field is personal data."""

    name: str | None = field(default=None, repr=False)
    email: str | None = field(default=None, repr=False)
    phone: str | None = field(default=None, repr=False)
    postal_address: str | None = field(default=None, repr=False)

    def address_for(self, channel: ChannelName) -> str | None:
        match channel:
            case "email":
                return self.email
            case "sms" | "voice":
                return self.phone
            case "letter":
                return self.postal_address
        return None


@dataclass(frozen=True)
class ContactDetails:
    borrower_id: str
    language: Language
    debtor: Party
    guarantor: Party | None = None

    def party(self, recipient: Recipient) -> Party | None:
        return self.debtor if recipient == "debtor" else self.guarantor

    def address_for(self, recipient: Recipient, channel: ChannelName) -> str | None:
        party = self.party(recipient)
        return party.address_for(channel) if party is not None else None


@dataclass(frozen=True)
class Repayment:
    repayment_id: str
    # None when the reversal arrived before the receipt (so far only a guard: per-loan
    # ordering on the topic makes it unlikely).
    received_at: datetime | None
    reversed: bool


@dataclass(frozen=True)
class Cancellation:
    """The workflow said: do not send. For one command, or for everything issued so far."""

    reason: str
    cancelled_at: datetime
    command_id: str | None = None

    def covers(self, request: ContactRequest) -> bool:
        if self.command_id is not None:
            return self.command_id == request.command_id
        # Inclusive: a command stamped in the very instant of the cancellation is treated as
        # cancelled, because when in doubt nobody is contacted.
        return request.issued_at <= self.cancelled_at


@dataclass(frozen=True)
class DispatchContext:
    """Everything the decision needs beyond the command, loaded before deciding."""

    cancellations: tuple[Cancellation, ...] = ()
    repayments: tuple[Repayment, ...] = ()
    details: ContactDetails | None = None


@dataclass(frozen=True)
class Dispatch:
    """A stored command and where it is in its life."""

    request: ContactRequest
    status: DispatchStatus
    due_at: datetime
    attempts: int
    # Number of decisions recorded so far; numbers the next one (and its outcome event id).
    decision_seq: int

    @property
    def command_id(self) -> str:
        return self.request.command_id
