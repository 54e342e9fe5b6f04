"""What the workflow reacts to, in domain terms (mapped from the wire at the edge)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class MoneySeen:
    """The newest repayment or reversal of a loan, consumed while the loan had no case.

    Topics are consumed independently, so a loan's repayment can be read before the overdue
    report that opens its case. Its ``outstanding_after`` is the lending system's balance at
    ``at``: the newest such figure is the whole story, older ones add nothing.
    """

    event_id: str
    kind: str  # repayment | reversal
    repayment_id: str
    amount: Decimal
    outstanding_after: Decimal
    at: datetime


@dataclass(frozen=True)
class OverdueReported:
    event_id: str
    loan_id: str
    borrower_id: str
    product: str
    currency: str
    amount_overdue: Decimal
    outstanding: Decimal
    days_past_due: int
    as_of: datetime
    borrower_time_zone: str
    jurisdiction: str
    # Attached by the app when it opens a case: what was seen of the loan's money before.
    # Part of the journalled input, so the replay decides on it too.
    money_seen: MoneySeen | None = None


@dataclass(frozen=True)
class RiskSignalReceived:
    """A risk model's signal about a loan that is still current (early warning): with the
    borrower's particulars an overdue report carries, so a case can contact them."""

    event_id: str
    signal_id: str
    loan_id: str
    borrower_id: str
    product: str
    kind: str
    score: Decimal
    currency: str
    outstanding: Decimal
    observed_at: datetime
    valid_until: datetime
    borrower_time_zone: str
    jurisdiction: str
    # Attached by the app when the loan has no case, as to an overdue report: the newest
    # repayment seen of it. Part of the journalled input, so the replay decides on it too.
    money_seen: MoneySeen | None = None


@dataclass(frozen=True)
class RepaymentReceived:
    event_id: str
    repayment_id: str
    amount: Decimal
    outstanding_after: Decimal
    at: datetime


@dataclass(frozen=True)
class RepaymentReversed:
    event_id: str
    repayment_id: str
    amount: Decimal
    outstanding_after: Decimal
    at: datetime


@dataclass(frozen=True)
class BalanceConfirmed:
    event_id: str
    check_id: str
    confirmation_id: str
    confirmed_outstanding: Decimal
    ledger_watermark: int
    confirmed_at: datetime
    valid_until: datetime


@dataclass(frozen=True)
class BalanceRefused:
    event_id: str
    check_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class ContactOutcomeReported:
    event_id: str
    command_id: str
    intent_id: str
    channel: str
    outcome: str
    reason: str
    # When the notifier made (or failed) the contact; None in journals written before.
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class PermitNoted:
    """A person's contact permit, as the notifier decided it: granted, refused, or its
    reported result. For the timeline only (a collector's result acts through the task)."""

    event_id: str
    kind: str  # granted | refused | result
    permit_id: str
    person: str
    channel: str
    actor_kind: str  # collector | agency
    actor_id: str
    reason: str
    rule: str
    retry_after: datetime | None = None
    result: str | None = None
    # Refused for want of a valid ledger confirmation, with none on its way: ask for one.
    confirmation_needed: bool = False


@dataclass(frozen=True)
class BalanceCorrected:
    event_id: str
    kind: str  # nothing_owed | drift
    ledger_outstanding: Decimal


@dataclass(frozen=True)
class TimerFired:
    timer_id: str
    kind: str
    token: str
    due_at: datetime


# --- commands from people, through the REST API -------------------------------------------


@dataclass(frozen=True)
class RequestHold:
    request_id: str
    kind: str  # hardship | dispute | breathing_space | operator
    reason: str
    actor: str
    until: datetime | None = None
    # When the hold took effect, if before it was recorded: a breathing space starts on
    # the day debt advice was applied for. None: now.
    effective_from: datetime | None = None


@dataclass(frozen=True)
class RequestResume:
    request_id: str
    reason: str
    actor: str
    # A dispute resumes only after its verification is recorded (CONC 7.14, Reg F).
    verification_outcome: str | None = None


@dataclass(frozen=True)
class InstalmentTerms:
    due_at: datetime
    amount: Decimal


@dataclass(frozen=True)
class RecordArrangement:
    request_id: str
    kind: str  # promise_to_pay | instalment_plan
    schedule: tuple[InstalmentTerms, ...]
    actor: str
    interest_reduction: Decimal | None = None
    note: str = ""


@dataclass(frozen=True)
class Waivers:
    """Charges a proposal asks to have waived, as amounts (domain/negotiation.py)."""

    penalty_interest: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    principal: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.penalty_interest + self.fees + self.principal


@dataclass(frozen=True)
class SubmitProposal:
    """A borrower's proposal, brought by a collector, an agency or the borrower portal."""

    request_id: str
    actor: str
    via: str  # collector | agency | portal
    down_payment: InstalmentTerms
    instalments: tuple[InstalmentTerms, ...]
    waivers: Waivers = Waivers()
    note: str = ""
    # The proposer's groups when it was made (its token's): what they may approve. Part of
    # the journalled input, so the replay judges with the same authority.
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestEscalation:
    request_id: str
    kind: str  # manual | fraud | proposal_unreasonable
    reason: str
    actor: str


@dataclass(frozen=True)
class RecordLegalMilestone:
    request_id: str
    milestone: str  # registered | reviewed | suit_filed | judgment | enforcement_applied
    reference: str
    actor: str
    note: str = ""


@dataclass(frozen=True)
class RequestClosure:
    request_id: str
    exit: str  # settled | written_off | closed
    reason: str
    actor: str
