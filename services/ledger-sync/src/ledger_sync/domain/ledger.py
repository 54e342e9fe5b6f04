"""The ledger projection and the answer to a balance check. Pure.

The ledger numbers each loan's postings 1, 2, 3... A projection applies them strictly in
sequence: an early arrival waits in a buffer, and while anything waits the projection has a
gap and confirms nothing, because a missing posting may be the repayment that makes a
contact unlawful.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal


@dataclass(frozen=True)
class Posting:
    posting_id: str
    loan_id: str
    sequence: int
    kind: str
    currency: str
    amount: Decimal  # signed: positive raises what is owed
    booked_at: datetime
    repayment_id: str | None = None


@dataclass(frozen=True)
class Projection:
    loan_id: str
    currency: str
    balance: Decimal
    # Highest sequence applied without a gap below it.
    watermark: int
    updated_at: datetime


@dataclass(frozen=True)
class Applied:
    projection: Projection
    # Postings applied by this step, in order (the new one and any it unblocked).
    applied: tuple[Posting, ...]
    # Postings that must wait for a missing sequence number.
    still_buffered: tuple[Posting, ...]


def apply_posting(current: Projection | None, buffered: tuple[Posting, ...], posting: Posting,
                  now: datetime) -> Applied:
    """Apply ``posting`` and every buffered one it makes contiguous."""
    projection = current or Projection(posting.loan_id, posting.currency, Decimal("0"), 0, now)
    waiting = {p.sequence: p for p in buffered if p.sequence > projection.watermark}
    if posting.sequence > projection.watermark:
        waiting.setdefault(posting.sequence, posting)
    applied: list[Posting] = []
    while projection.watermark + 1 in waiting:
        step = waiting.pop(projection.watermark + 1)
        projection = replace(projection, balance=projection.balance + step.amount,
                             watermark=step.sequence, updated_at=now)
        applied.append(step)
    return Applied(projection, tuple(applied), tuple(sorted(waiting.values(),
                                                            key=lambda p: p.sequence)))


@dataclass(frozen=True)
class CheckPolicy:
    # Differences below this are rounding, not debt.
    tolerance: Decimal = Decimal("1.00")
    # How long a confirmation may be relied upon; the notifier refuses it afterwards.
    validity: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class Confirm:
    outstanding: Decimal
    watermark: int
    valid_until: datetime
    mismatch: bool


@dataclass(frozen=True)
class Refuse:
    reason: str  # nothing_owed | unknown_loan | sequence_gap | projection_stale
    detail: str
    watermark: int


def answer_check(projection: Projection | None, has_gap: bool, money_in_flight: Decimal,
                 expected: Decimal, now: datetime, policy: CheckPolicy) -> Confirm | Refuse:
    if projection is None:
        return Refuse("unknown_loan", "the ledger has booked nothing for this loan", 0)
    if has_gap:
        return Refuse("sequence_gap",
                      f"postings after sequence {projection.watermark} are missing",
                      projection.watermark)
    # Money received but not yet booked still counts: a payment in flight stops contact.
    outstanding = projection.balance - money_in_flight
    if outstanding <= policy.tolerance:
        return Refuse("nothing_owed", "ledger balance net of payments in flight is within "
                      "tolerance", projection.watermark)
    return Confirm(outstanding=outstanding, watermark=projection.watermark,
                   valid_until=now + policy.validity,
                   mismatch=abs(outstanding - expected) > policy.tolerance)
