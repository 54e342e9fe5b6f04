"""The collections case, its holds, arrangements, contact intents and timers: pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from workflow.domain.lifecycle import Phase
from workflow.domain.policy import Stage


class CaseStatus(StrEnum):
    OPEN = "open"
    HELD = "held"
    CLOSED = "closed"


class Exit(StrEnum):
    REPAID = "repaid"
    SETTLED = "settled"
    WRITTEN_OFF = "written_off"
    CLOSED = "closed"


class HoldKind(StrEnum):
    HARDSHIP = "hardship"
    DISPUTE = "dispute"
    BREATHING_SPACE = "breathing_space"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Hold:
    hold_id: str
    kind: HoldKind
    reason: str
    actor: str
    # When it was recorded.
    started_at: datetime
    # Breathing space (and any dated hold) ends by itself at this time.
    until: datetime | None = None
    # When it took effect: earlier than started_at for a backdated hold (None: the same).
    effective_from: datetime | None = None

    @property
    def since(self) -> datetime:
        return self.effective_from or self.started_at


@dataclass(frozen=True)
class Instalment:
    due_at: datetime
    amount: Decimal


class ArrangementKind(StrEnum):
    PROMISE_TO_PAY = "promise_to_pay"
    INSTALMENT_PLAN = "instalment_plan"


@dataclass(frozen=True)
class Arrangement:
    arrangement_id: str
    kind: ArrangementKind
    # A promise is a plan of one instalment; a plan's first instalment is the down payment.
    schedule: tuple[Instalment, ...]
    created_at: datetime
    # Repaid towards the arrangement since it was agreed, in several parts or one.
    paid: Decimal = Decimal("0")
    # Recorded, not applied: the ledger books the reduced interest.
    interest_reduction: Decimal | None = None
    note: str = ""
    # Set when it ends: kept (a promise), completed (a plan: settles the case), broken,
    # repaid (the debt was repaid in full meanwhile), cancelled (a hold, a stage change or
    # a closure ended it first).
    outcome: str | None = None
    ended_at: datetime | None = None

    @property
    def total(self) -> Decimal:
        return sum((i.amount for i in self.schedule), Decimal("0"))

    def due_by(self, at: datetime) -> Decimal:
        return sum((i.amount for i in self.schedule if i.due_at <= at), Decimal("0"))

    def covered(self, index: int) -> bool:
        """Is every instalment up to and including ``index`` paid for?"""
        return self.paid >= sum((i.amount for i in self.schedule[: index + 1]), Decimal("0"))


@dataclass(frozen=True)
class PreDelinquency:
    """The risk signal a pre-delinquency case rests on (early warning): the loan is current,
    so the case reminds the borrower and never escalates, until the signal expires, the
    loan is repaid, or it falls overdue and the case collects as any other."""

    # The signal that opened this pre-delinquency (a later one may extend it).
    signal_id: str
    kind: str
    score: Decimal
    observed_at: datetime
    # The case ends by itself then (a durable timer); a later signal may move it on.
    valid_until: datetime


@dataclass(frozen=True)
class Case:
    case_id: str
    loan_id: str
    borrower_id: str
    product: str
    currency: str
    stage: Stage
    status: CaseStatus
    exit: Exit | None
    outstanding: Decimal
    amount_overdue: Decimal
    days_past_due: int
    # The as-of time of the newest overdue report applied; older reports change nothing.
    last_overdue_as_of: datetime
    borrower_time_zone: str
    jurisdiction: str
    policy_version: str
    opened_at: datetime
    updated_at: datetime
    # Bumped on every stage change, hold, resume and reopen: a timer scheduled under an
    # older epoch is stale and does nothing when it fires.
    stage_epoch: int = 0
    stage_entered_at: datetime | None = None
    # What was owed when the case entered its current stage (for stepping back).
    outstanding_at_stage_entry: Decimal | None = None
    hold: Hold | None = None
    arrangement: Arrangement | None = None
    # The arrangement that ended last, with its outcome: what was promised and paid stays
    # readable after the grace period is over.
    last_arrangement: Arrangement | None = None
    unanswered_contacts: int = 0
    milestones: tuple[str, ...] = ()
    # When the case last applied a repayment or reversal: a balance check asked for before
    # then was answered on older money and must not set the outstanding back.
    money_applied_at: datetime | None = None
    # When proposals were refused, within the negotiation policy's period: enough of them
    # make the proposal "unreasonable" by the policy's rule (domain/negotiation.py).
    refused_proposals: tuple[datetime, ...] = ()
    # Champion-challenger: the policy variant assigned at open and kept for life ("": the
    # product has none). Every decision on the case is taken under this variant's policy.
    variant: str = ""
    # Early warning: set while the case is a pre-delinquency case (the loan is not overdue),
    # and kept on a case that ended so (expired, repaid), which an overdue report reopens.
    pre_delinquency: PreDelinquency | None = None

    @property
    def is_open(self) -> bool:
        return self.status is CaseStatus.OPEN

    @property
    def is_closed(self) -> bool:
        return self.status is CaseStatus.CLOSED

    @property
    def phase(self) -> Phase:
        if self.status is CaseStatus.CLOSED:
            assert self.exit is not None
            return Phase(self.exit.value)
        if self.status is CaseStatus.HELD:
            return Phase.HELD
        # Before "arranged": a plan agreed before the loan fell due changes nothing of the
        # rule that a pre-delinquency case never escalates.
        if self.pre_delinquency is not None:
            return Phase.PRE_DELINQUENCY
        if self.arrangement is not None:
            return Phase.ARRANGED
        return Phase(self.stage.value)


class IntentStatus(StrEnum):
    # Waiting for ledger-sync; no command may leave until it confirms.
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    # The ledger could not answer (stale, gap, unknown): a re-check is scheduled.
    AWAITING_RECHECK = "awaiting_recheck"
    COMMANDED = "commanded"
    CANCELLED = "cancelled"
    REFUSED = "refused"


@dataclass(frozen=True)
class ContactIntent:
    intent_id: str
    case_id: str
    loan_id: str
    stage: Stage
    channel: str
    recipient: str
    template: str
    status: IntentStatus
    created_at: datetime
    reason: str = ""
    command_id: str | None = None
    confirmation_id: str | None = None
    # Each balance check has its own id, so a re-check is a new question to ledger-sync.
    check_id: str = ""
    attempts: int = 0

    @property
    def is_pending(self) -> bool:
        return self.status in (IntentStatus.AWAITING_CONFIRMATION, IntentStatus.AWAITING_RECHECK)


class TimerKind(StrEnum):
    STAGE_TIME_LIMIT = "stage_time_limit"
    NOTICE_DEADLINE = "notice_deadline"
    ARRANGEMENT_DUE = "arrangement_due"
    HOLD_EXPIRY = "hold_expiry"
    RECHECK = "recheck"
    # An agency placement's period ends (domain/placement.py decides; the case does not move).
    PLACEMENT_EXPIRY = "placement_expiry"
    # Early warning: the risk signal a pre-delinquency case rests on expires (token: its
    # valid_until, so a signal that extended it makes the older timer stale).
    SIGNAL_EXPIRY = "signal_expiry"
    # Early warning: the next reminder to the borrower (token: the stage epoch).
    EARLY_WARNING_REMINDER = "early_warning_reminder"


@dataclass(frozen=True)
class Timer:
    """A durable timer: fires once at or after ``due_at``; ``token`` says what it is for."""

    kind: TimerKind
    due_at: datetime
    token: str


@dataclass(frozen=True)
class TimelineEntry:
    """One audited step of a case: what happened, why, and the state on either side."""

    kind: str
    cause: str
    stage_before: Stage | None
    stage_after: Stage | None
    status_before: CaseStatus | None
    status_after: CaseStatus | None
    policy_version: str
    detail: dict[str, Any] = field(default_factory=dict)
