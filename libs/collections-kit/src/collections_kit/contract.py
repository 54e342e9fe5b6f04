"""The messages of the public contract: one pydantic model per CloudEvents ``type``.

These models are the single source of the JSON Schemas and the AsyncAPI document under
``contracts/`` (``make contracts``). They describe the wire, not the domain: each service
maps them onto its own domain types at its edge.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from collections_kit import vocabulary
from collections_kit.jurisdictions import JURISDICTION_PATTERN
from collections_kit.money import Amount, CurrencyCode, InCurrency, NonNegativeAmount
from collections_kit.topics import Topic

LoanId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]
# Ledger sequence numbers and watermarks are stored as BIGINT: a larger one is invalid
# input, refused on decoding rather than by the database inside a consumer's transaction.
MAX_SEQUENCE = 2**63 - 1
# The shape of an ISO 3166-1 alpha-2 code (UK, not GB, by the lenders' usage). Which
# jurisdictions a service can act for is policy data (collections_kit.jurisdictions: one
# file each), not the contract: a code without a file is refused by the service
# ("jurisdiction XX has no policy"), so adding one needs no new contract version.
Jurisdiction = Annotated[
    str, StringConstraints(pattern=JURISDICTION_PATTERN), Field(examples=["CN", "US", "UK"])
]
Channel = vocabulary.Channel
# A risk score from 0 to 1, written as a decimal string as amounts are (no binary float
# on the wire: a threshold of 0.7 must compare exactly).
SCORE_PATTERN = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"
Score = Annotated[
    Decimal,
    Field(ge=0, le=1, max_digits=7, decimal_places=6),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": SCORE_PATTERN, "examples": ["0.82"]}),
]
# The stages are collections_kit.vocabulary's; a Literal of its members keeps each field's
# JSON Schema an inline enum of their values (test_envelope checks it names every member).
Stage = Literal[
    vocabulary.Stage.WARNING,
    vocabulary.Stage.FORMAL_NOTICE,
    vocabulary.Stage.GUARANTOR_RECOURSE,
    vocabulary.Stage.LITIGATION,
    vocabulary.Stage.ENFORCEMENT,
]


def without_policy(known: Collection[str]) -> Callable[[BaseModel], str | None]:
    """A consumer's ``admit``: a message for a jurisdiction outside ``known`` (the service's
    policy data) is refused as invalid, with the reason a publisher can act on."""

    def refused(message: BaseModel) -> str | None:
        code = getattr(message, "jurisdiction", None)
        if code is None or code in known:
            return None
        return f"jurisdiction {code} has no policy"

    return refused


class Message(InCurrency):
    """Base of every payload: unknown fields are refused so that typos fail loudly. A payload
    with a ``currency`` writes its amounts in that currency's minor unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- inbound from the lending systems -----------------------------------------------------


class LoanOverdue(Message):
    """A loan is (still) overdue, as the lending system sees it on ``as_of``."""

    loan_id: LoanId
    borrower_id: LoanId
    product: str = Field(default="consumer-loan", max_length=64)
    currency: CurrencyCode
    amount_overdue: NonNegativeAmount
    outstanding_balance: NonNegativeAmount
    days_past_due: int = Field(ge=0, le=36500)
    as_of: AwareDatetime
    borrower_time_zone: str = Field(max_length=64, examples=["Asia/Shanghai"])
    jurisdiction: Jurisdiction


class RepaymentReceived(Message):
    repayment_id: LoanId
    loan_id: LoanId
    currency: CurrencyCode
    amount: NonNegativeAmount
    # The lending system's outstanding balance after applying this repayment.
    outstanding_balance_after: NonNegativeAmount
    received_at: AwareDatetime


class RepaymentReversed(Message):
    """A repayment bounced or was charged back: the money is owed again."""

    repayment_id: LoanId
    loan_id: LoanId
    currency: CurrencyCode
    amount: NonNegativeAmount
    outstanding_balance_after: NonNegativeAmount
    reversed_at: AwareDatetime
    reason: str = Field(default="", max_length=200)


class RiskSignal(Message):
    """A risk model's signal about a loan that is still current (early warning).

    ``score`` runs from 0 (no risk seen) to 1; the product's policy says from which score a
    pre-delinquency case opens. The signal holds until ``valid_until``; a later one may
    extend it. Carries what an overdue report carries about the borrower, so that a case
    can contact them (and become an ordinary case if the loan falls overdue).
    """

    signal_id: LoanId
    loan_id: LoanId
    borrower_id: LoanId
    product: str = Field(default="consumer-loan", max_length=64)
    kind: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9_]+$",
        examples=["income_drop", "missed_other_payment", "overdraft"],
    )
    score: Score
    currency: CurrencyCode
    outstanding_balance: NonNegativeAmount
    observed_at: AwareDatetime
    valid_until: AwareDatetime
    borrower_time_zone: str = Field(max_length=64, examples=["Asia/Shanghai"])
    jurisdiction: Jurisdiction

    @field_validator("valid_until")
    @classmethod
    def _valid_after_observed(cls, value: datetime, info: ValidationInfo) -> datetime:
        # On the field, so that a dead letter's reason names it.
        observed = info.data.get("observed_at")
        if observed is not None and value <= observed:
            raise ValueError("valid_until must be after observed_at")
        return value


class LedgerPostingBooked(Message):
    """A posting the ledger booked. ``sequence`` counts 1, 2, 3... per loan without gaps.

    ``amount`` is signed as its effect on what the borrower owes: a disbursement, interest or
    a fee is positive, a repayment or write-off negative.
    """

    posting_id: LoanId
    loan_id: LoanId
    sequence: int = Field(ge=1, le=MAX_SEQUENCE)
    kind: Literal["disbursement", "interest", "fee", "repayment", "reversal", "write_off"]
    currency: CurrencyCode
    amount: Amount
    booked_at: AwareDatetime
    # For repayments and reversals: the lending system's repayment id, so money in flight
    # (seen on loans.repayment.v1, not yet booked) can be matched once it is booked.
    repayment_id: LoanId | None = None


# --- between our services -----------------------------------------------------------------


class BalanceCheckRequested(Message):
    check_id: str
    loan_id: LoanId
    currency: CurrencyCode
    # What the workflow believes is owed; a difference beyond tolerance is reported.
    expected_outstanding: NonNegativeAmount
    requested_at: AwareDatetime


class BalanceConfirmed(Message):
    check_id: str
    loan_id: LoanId
    confirmation_id: str
    currency: CurrencyCode
    confirmed_outstanding: NonNegativeAmount
    # The ledger sequence number the confirmation is based on.
    ledger_watermark: int = Field(ge=0, le=MAX_SEQUENCE)
    confirmed_at: AwareDatetime
    valid_until: AwareDatetime
    expected_outstanding: NonNegativeAmount


class BalanceRefused(Message):
    check_id: str
    loan_id: LoanId
    reason: Literal["nothing_owed", "unknown_loan", "projection_stale", "sequence_gap"]
    detail: str = ""
    ledger_watermark: int = Field(ge=0, le=MAX_SEQUENCE)
    refused_at: AwareDatetime


# --- outbound -------------------------------------------------------------------------------


class ContactCommand(Message):
    """Contact a party about a loan. Only ever emitted after a ledger confirmation."""

    command_id: str
    intent_id: str
    case_id: str
    loan_id: LoanId
    borrower_id: LoanId
    recipient: vocabulary.Recipient
    channel: Channel
    stage: Stage
    template: str
    currency: CurrencyCode
    amount_due: NonNegativeAmount
    confirmation_id: str
    ledger_watermark: int = Field(ge=0, le=MAX_SEQUENCE)
    confirmed_at: AwareDatetime
    confirmation_valid_until: AwareDatetime
    borrower_time_zone: str
    jurisdiction: Jurisdiction
    issued_at: AwareDatetime


class ContactCancelled(Message):
    """Every pending command for the loan (or the one named) must not be sent."""

    loan_id: LoanId
    command_id: str | None = None
    reason: Literal["repaid", "settled", "closed", "held", "written_off"]
    cancelled_at: AwareDatetime


class ContactOutcome(Message):
    command_id: str
    intent_id: str
    loan_id: LoanId
    channel: Channel
    # "in_doubt": handed to a channel, whether it arrived unknown (a crash came between the
    # hand-over and its record, and the channel cannot be asked); counted as a contact.
    outcome: Literal[
        "sent",
        "delivered",
        "failed",
        "answered",
        "unanswered",
        "deferred",
        "blocked",
        "cancelled",
        "in_doubt",
    ]
    reason: str = ""
    rule: str = ""
    occurred_at: AwareDatetime


class ContactPermitNoted(Message):
    """A person's contact permit, for the case's timeline: ``granted``, ``refused`` (with
    the reason and the rule that decided) or its ``result`` reported by its holder.

    Ids and codes only, never personal data (no number, no name). It records; it does not
    act on the case: a collector's call result acts through the workflow's task result.
    ``confirmation_needed``: refused for want of a valid ledger confirmation, with none on
    its way; the workflow asks ledger-sync for one (the permit's ``retry_after`` says when
    to ask again).
    """

    kind: Literal["granted", "refused", "result"]
    permit_id: str = Field(max_length=100)
    loan_id: LoanId
    person: vocabulary.Recipient
    channel: Channel
    actor_kind: Literal["collector", "agency"]
    actor_id: str = Field(max_length=200)
    # all_checks_passed, or why the contact was refused (the permit API's reason codes).
    reason: str = Field(max_length=64)
    rule: str = Field(max_length=120)
    retry_after: AwareDatetime | None = None
    result: Literal["connected", "unanswered", "conversation"] | None = None
    confirmation_needed: bool = False
    occurred_at: AwareDatetime


class CaseOpened(Message):
    case_id: str
    loan_id: LoanId
    borrower_id: LoanId
    stage: Stage
    policy_version: str
    opened_at: AwareDatetime


class CaseStageChanged(Message):
    case_id: str
    loan_id: LoanId
    from_stage: Stage
    to_stage: Stage
    cause: str
    policy_version: str
    changed_at: AwareDatetime


class CaseClosed(Message):
    case_id: str
    loan_id: LoanId
    outcome: Literal["repaid", "settled", "written_off", "closed"]
    cause: str
    closed_at: AwareDatetime


HoldKind = Literal["hardship", "dispute", "breathing_space", "operator"]


class CaseHeld(Message):
    """A case is on hold: no escalation, no contact, until it is resumed (or the hold ends)."""

    case_id: str
    loan_id: LoanId
    hold_id: str
    kind: HoldKind
    reason: str = Field(max_length=500)
    # Breathing space ends by itself after its legal length; other holds need a resume.
    until: AwareDatetime | None = None
    actor: str
    held_at: AwareDatetime


class CaseResumed(Message):
    case_id: str
    loan_id: LoanId
    hold_id: str
    reason: str = Field(max_length=500)
    actor: str
    resumed_at: AwareDatetime


# Agencies are named by the same ids their tokens carry as subject.
AgencyId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]
PlacementNoticeKind = Literal["placed", "recalled", "held", "resumed", "repaid"]
RecallReason = Literal[
    "repaid", "hold", "dispute", "closure", "expiry", "stage_changed", "out_of_tier"
]


class PlacementNotice(Message):
    """What an agency hears of a case placed with it; keyed by loan.

    ``placed`` gives it the case until ``placed_until``; ``recalled`` takes it back at once
    (with the reason): repayment, hold, dispute, closure, the placement's expiry, or the
    case leaving the placement's tier (``stage_changed``: escalated to a stage the tier does
    not take; ``out_of_tier``: its balance or days past due no longer fit it). A hold
    first sends ``held`` (stop calling), then the recall; if the hold ends within the
    placement's period the case comes back to the same agency with ``resumed``. ``repaid``
    is a repayment made while placed, with the commission it accrued.

    No personal data (ids only, as on the case events): an agency reads the contact details
    of a case placed with it over REST, under its own scope.
    """

    kind: PlacementNoticeKind
    placement_id: str
    case_id: str
    loan_id: LoanId
    # The lender's opaque borrower id (as on CaseOpened): what contact details are keyed by.
    borrower_id: LoanId
    agency: AgencyId
    tier: str = Field(max_length=64, examples=["primary"])
    reason: RecallReason | None = None
    stage: Stage
    days_past_due: int = Field(ge=0, le=36500)
    currency: CurrencyCode
    outstanding: NonNegativeAmount
    placed_until: AwareDatetime
    # repaid: the repayment and the agency's commission on it.
    amount: NonNegativeAmount | None = None
    commission: NonNegativeAmount | None = None
    occurred_at: AwareDatetime


class BalanceCorrected(Message):
    """Reconciliation found the collections view drifted from the ledger.

    ``nothing_owed`` tells the workflow to close the case (settled correction); ``drift``
    carries the ledger's amount for the case to adopt.
    """

    loan_id: LoanId
    kind: Literal["nothing_owed", "drift"]
    currency: CurrencyCode
    ledger_outstanding: Amount
    ledger_watermark: int = Field(ge=0, le=MAX_SEQUENCE)
    corrected_at: AwareDatetime


class DeadLetter(Message):
    """A message a consumer could not process, with where it came from and why."""

    reason: str
    # conflicting_duplicate: an event id already processed came again with another
    # payload; the first one's effect stands, this record had none.
    error_kind: Literal[
        "undecodable", "invalid", "unknown_type", "handler_failed", "conflicting_duplicate"
    ]
    consumer_group: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    # The original key as text when it is UTF-8, otherwise base64 (see key_encoding): a
    # replay reproduces the record's exact bytes.
    origin_key: str | None
    key_encoding: Literal["utf-8", "base64"] = "utf-8"
    origin_headers: dict[str, str]
    # The headers whose value is base64 in origin_headers, not being UTF-8 text.
    origin_header_encodings: dict[str, Literal["utf-8", "base64"]] = Field(default_factory=dict)
    # The original value as text when it is UTF-8, otherwise base64 (see value_encoding).
    origin_value: str
    value_encoding: Literal["utf-8", "base64"]
    failed_at: datetime


@dataclass(frozen=True)
class MessageSpec:
    ce_type: str
    topic: Topic
    model: type[Message]
    summary: str
    # Who publishes it: a system outside this repository or one of our services.
    producer: str


_LENDER, _LEDGER, _WORKFLOW, _LEDGER_SYNC, _NOTIFIER = (
    "lending-system",
    "ledger",
    "workflow",
    "ledger-sync",
    "notifier",
)

MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(
        "loan.overdue.v1",
        Topic.LOANS_OVERDUE,
        LoanOverdue,
        "A loan is overdue; published daily per delinquent loan.",
        _LENDER,
    ),
    MessageSpec(
        "loan.repayment.received.v1",
        Topic.LOANS_REPAYMENT,
        RepaymentReceived,
        "A repayment was received.",
        _LENDER,
    ),
    MessageSpec(
        "loan.repayment.reversed.v1",
        Topic.LOANS_REPAYMENT,
        RepaymentReversed,
        "A repayment bounced or was reversed.",
        _LENDER,
    ),
    MessageSpec(
        "loan.risk-signal.v1",
        Topic.LOANS_RISK_SIGNALS,
        RiskSignal,
        "A risk signal about a current loan (early warning).",
        _LENDER,
    ),
    MessageSpec(
        "ledger.posting.booked.v1",
        Topic.LEDGER_POSTINGS,
        LedgerPostingBooked,
        "The ledger booked a posting on a loan.",
        _LEDGER,
    ),
    MessageSpec(
        "collections.balance-check.requested.v1",
        Topic.BALANCE_CHECKS,
        BalanceCheckRequested,
        "The workflow asks for a balance confirmation.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.balance.confirmed.v1",
        Topic.BALANCE_CONFIRMATIONS,
        BalanceConfirmed,
        "Ledger-sync confirmed money is still owed.",
        _LEDGER_SYNC,
    ),
    MessageSpec(
        "collections.balance.refused.v1",
        Topic.BALANCE_CONFIRMATIONS,
        BalanceRefused,
        "Ledger-sync would not confirm; no contact may follow.",
        _LEDGER_SYNC,
    ),
    MessageSpec(
        "collections.contact.commanded.v1",
        Topic.CONTACT_COMMANDS,
        ContactCommand,
        "Contact a party; carries the ledger confirmation it rests on.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.contact.cancelled.v1",
        Topic.CONTACT_COMMANDS,
        ContactCancelled,
        "Pending commands for the loan must not be sent.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.contact.outcome.v1",
        Topic.CONTACT_OUTCOMES,
        ContactOutcome,
        "What the notifier did with a command.",
        _NOTIFIER,
    ),
    MessageSpec(
        "collections.contact.permit.v1",
        Topic.CONTACT_OUTCOMES,
        ContactPermitNoted,
        "A person's contact permit granted or refused (with the reason), or its result.",
        _NOTIFIER,
    ),
    MessageSpec(
        "collections.case.opened.v1",
        Topic.CASE_EVENTS,
        CaseOpened,
        "A delinquent loan became a collections case.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.case.stage-changed.v1",
        Topic.CASE_EVENTS,
        CaseStageChanged,
        "A case moved between stages.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.case.closed.v1",
        Topic.CASE_EVENTS,
        CaseClosed,
        "A case left collections.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.case.held.v1",
        Topic.CASE_EVENTS,
        CaseHeld,
        "A case was put on hold; nothing escalates or contacts until resumed.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.case.resumed.v1",
        Topic.CASE_EVENTS,
        CaseResumed,
        "A hold ended; contact needs a fresh ledger confirmation.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.placement.notice.v1",
        Topic.PLACEMENTS,
        PlacementNotice,
        "A case placed with an agency, recalled, held, resumed or repaid while placed.",
        _WORKFLOW,
    ),
    MessageSpec(
        "collections.balance.corrected.v1",
        Topic.BALANCE_CONFIRMATIONS,
        BalanceCorrected,
        "Reconciliation corrected a case's balance from the ledger.",
        _LEDGER_SYNC,
    ),
    MessageSpec(
        "collections.dead-letter.v1",
        Topic.DLQ,
        DeadLetter,
        "A message that could not be processed, with its origin and the reason.",
        "any consumer",
    ),
)

SPEC_BY_TYPE: dict[str, MessageSpec] = {spec.ce_type: spec for spec in MESSAGES}
SPEC_BY_MODEL: dict[type[Message], MessageSpec] = {spec.model: spec for spec in MESSAGES}
