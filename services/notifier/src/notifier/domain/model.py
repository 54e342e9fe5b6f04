"""What the notifier knows when it decides about one contact, in domain terms.

Mapped from the wire (``ContactCommand`` and friends) and from the tables at the edge; the
decision function sees only these types. Personal data (addresses, names) is kept out of
``repr`` so that an object logged by accident does not leak it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from collections_kit.vocabulary import Channel
from collections_kit.vocabulary import Recipient as Recipient

ChannelName = Channel
Language = Literal["zh-CN", "en"]
# "in_doubt": handed to a channel that cannot say whether the person got it (a crash came
# between the hand-over and its record); see notifier.domain.in_doubt.
Outcome = Literal["sent", "deferred", "blocked", "cancelled", "failed", "in_doubt"]
# What a channel reports back. "sent": handed over, nothing more known (SMTP, print);
# "delivered": the provider confirmed delivery; "answered"/"unanswered": a call's result.
DeliveryStatus = Literal["sent", "delivered", "answered", "unanswered"]
PHONE_CHANNELS: frozenset[ChannelName] = frozenset({"sms", "voice"})


def number_key(phone: str) -> str:
    """A stable pseudonym of a phone number, for counting attempts per number.

    The clear number stays in ``contact_details`` only; the attempt log, which grows with
    every contact and is kept for the audit period, holds this key instead.
    """
    return hashlib.sha256(f"tel:{phone}".encode()).hexdigest()[:32]


class DispatchStatus(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    # Handed to a channel; the external call may or may not have happened. A row left here
    # past its lease is picked up again (see the dispatcher).
    SENDING = "sending"
    SENT = "sent"
    # Handed over, whether it arrived is unknown and the channel cannot tell: no timer takes
    # it again (not open); a delivery receipt, an operator or the policy's rule settles it.
    IN_DOUBT = "in_doubt"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


# Statuses the dispatcher still has work for; everything else is final.
OPEN_STATUSES: tuple[DispatchStatus, ...] = (
    DispatchStatus.PENDING,
    DispatchStatus.DEFERRED,
    DispatchStatus.SENDING,
)
# Statuses a workflow cancellation still reaches: once handed to a channel it is too late.
CANCELLABLE_STATUSES: tuple[DispatchStatus, ...] = (DispatchStatus.PENDING, DispatchStatus.DEFERRED)


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
    # None: a person speaks (a collector's or an agency's call under a contact permit), so
    # there is no text whose language or audience could be checked.
    template: str | None
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
class Hold:
    """A case on hold (from the workflow's ``CaseHeld``), and how it ended if it did."""

    hold_id: str
    kind: str
    held_at: datetime
    # Breathing space ends by itself; other holds end with a resume.
    until: datetime | None = None
    resumed_at: datetime | None = None

    @property
    def ends_at(self) -> datetime | None:
        ends = [t for t in (self.until, self.resumed_at) if t is not None]
        return min(ends) if ends else None

    def covers(self, request: ContactRequest, now: datetime) -> bool:
        """Whether the hold voids ``request``.

        A hold in force stops everything. A hold that has ended still voids every command
        issued before it ended: the workflow re-confirms the balance on resume and issues
        fresh commands, so an old one parked through the hold must not go out after it.
        """
        # Known here means announced: in force even if our clock lags the workflow's.
        ends = self.ends_at
        return ends is None or now < ends or request.issued_at <= ends


@dataclass(frozen=True)
class Closure:
    """The workflow closed the loan's case: nothing issued up to then may go out."""

    outcome: str
    closed_at: datetime

    def covers(self, request: ContactRequest) -> bool:
        return request.issued_at <= self.closed_at


# "connected": a person's call reached someone but no conversation about the debt took
# place (reported with a contact permit's result; an automated call's "answered" may
# always have been a conversation).
AttemptResult = Literal[
    "pending", "sent", "delivered", "answered", "unanswered", "failed", "unknown", "connected"
]
# Who made an attempt: the notifier's own channels, or a person under a contact permit.
ActorKind = Literal["system", "collector", "agency"]


@dataclass(frozen=True)
class Attempt:
    """One contact handed to a channel: what the frequency caps count.

    ``pending`` is in flight (handed over, no result yet): it counts as the worst case for
    every cap, so that two replicas deciding at once can never both squeeze under one.
    ``unknown`` (the call timed out) counts the same way for good. ``failed`` means the
    provider said it did not reach anyone, and does not count.
    """

    command_id: str
    loan_id: str
    person: str
    channel: ChannelName
    at: datetime
    result: AttemptResult
    number: str | None = None
    # For a pending attempt: by when it has a result or its lease runs out.
    settles_by: datetime | None = None

    @property
    def counted(self) -> bool:
        return self.result != "failed"

    @property
    def maybe_connected(self) -> bool:
        """Could have been a conversation (the worst case for an unknown result)."""
        if self.channel != "voice":
            return False
        return self.result not in ("unanswered", "failed", "delivered")

    @property
    def maybe_conversation(self) -> bool:
        """Could have been a conversation about the debt (what starts a quiet period)."""
        return self.maybe_connected and self.result != "connected"

    @property
    def maybe_unanswered(self) -> bool:
        if self.channel != "voice":
            return False
        return self.result not in ("answered", "connected", "failed")


def person_key(borrower_id: str, recipient: Recipient) -> str:
    """Who is contacted: the debtor, or the guarantor of that debtor's loans."""
    return f"{borrower_id}:{recipient}"


ValidationState = Literal["not_required", "none", "in_flight", "sent"]


@dataclass(frozen=True)
class Preferences:
    """What the person asked for: channels they opted out of, or no contact at all."""

    opted_out: frozenset[ChannelName] = frozenset()
    do_not_contact: bool = False


@dataclass(frozen=True)
class DispatchContext:
    """Everything the decision needs beyond the command, loaded before deciding."""

    cancellations: tuple[Cancellation, ...] = ()
    repayments: tuple[Repayment, ...] = ()
    details: ContactDetails | None = None
    holds: tuple[Hold, ...] = ()
    closures: tuple[Closure, ...] = ()
    preferences: Preferences = Preferences()
    # The contacts that the frequency caps may count: this person's, this number's.
    attempts: tuple[Attempt, ...] = ()
    # Whether a validation notice (Reg F 1006.34) went to this person about this debt.
    validation: ValidationState = "none"


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
