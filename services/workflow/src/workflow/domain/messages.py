"""What the workflow reacts to, in domain terms (mapped from the wire at the edge)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


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
