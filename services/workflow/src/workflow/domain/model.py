"""The collections case and its contact intents: pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from workflow.domain.policy import Stage


class CaseStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Exit(StrEnum):
    REPAID = "repaid"
    SETTLED = "settled"
    WRITTEN_OFF = "written_off"
    CLOSED = "closed"


class IntentStatus(StrEnum):
    # Waiting for ledger-sync; no command may leave until it confirms.
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    COMMANDED = "commanded"
    CANCELLED = "cancelled"
    REFUSED = "refused"


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

    @property
    def is_open(self) -> bool:
        return self.status is CaseStatus.OPEN


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

    @property
    def is_pending(self) -> bool:
        return self.status is IntentStatus.AWAITING_CONFIRMATION


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
