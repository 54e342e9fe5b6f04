"""The ledger projection and the answer to a balance check. Pure.

The ledger numbers each loan's postings 1, 2, 3... A projection applies them strictly in
sequence: an early arrival waits in a buffer, and while anything waits the projection has a
gap and confirms nothing, because a missing posting may be the repayment that makes a
contact unlawful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from collections_kit.vocabulary import BALANCE_TOLERANCE


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
    # When a posting was last applied.
    updated_at: datetime
    # When the ledger's own API last said it had booked nothing beyond ``watermark``.
    verified_at: datetime | None = None

    @property
    def current_as_of(self) -> datetime:
        """The last moment this projection is known to have matched the ledger."""
        if self.verified_at is None:
            return self.updated_at
        return max(self.updated_at, self.verified_at)


@dataclass(frozen=True)
class Applied:
    projection: Projection
    # Postings applied by this step, in order (the new one and any it unblocked).
    applied: tuple[Posting, ...]
    # Postings that must wait for a missing sequence number.
    still_buffered: tuple[Posting, ...]


def apply_posting(
    current: Projection | None, buffered: tuple[Posting, ...], posting: Posting, now: datetime
) -> Applied:
    """Apply ``posting`` and every buffered one it makes contiguous."""
    projection = current or Projection(posting.loan_id, posting.currency, Decimal("0"), 0, now)
    waiting = {p.sequence: p for p in buffered if p.sequence > projection.watermark}
    if posting.sequence > projection.watermark:
        waiting.setdefault(posting.sequence, posting)
    applied: list[Posting] = []
    while projection.watermark + 1 in waiting:
        step = waiting.pop(projection.watermark + 1)
        projection = replace(
            projection,
            balance=projection.balance + step.amount,
            watermark=step.sequence,
            updated_at=now,
        )
        applied.append(step)
    return Applied(
        projection, tuple(applied), tuple(sorted(waiting.values(), key=lambda p: p.sequence))
    )


def repair(
    current: Projection | None,
    buffered: tuple[Posting, ...],
    fetched: Sequence[Posting],
    now: datetime,
) -> Applied:
    """Apply postings fetched from the ledger's API through the same rule as the feed.

    Postings the projection already holds are ignored (as a replay from the feed would be),
    so a repair racing the feed can never count a posting twice.
    """
    projection, waiting = current, buffered
    applied: list[Posting] = []
    for posting in sorted(fetched, key=lambda p: p.sequence):
        step = apply_posting(projection, waiting, posting, now)
        projection, waiting = step.projection, step.still_buffered
        applied.extend(step.applied)
    if projection is None:
        raise ValueError("nothing to repair from: no projection and no postings")
    return Applied(projection, tuple(applied), waiting)


@dataclass(frozen=True)
class LedgerState:
    """What the ledger's own API says about a loan: its balance after ``sequence``."""

    currency: str
    balance: Decimal
    sequence: int


@dataclass(frozen=True)
class Verified:
    applied: Applied
    # The ledger's balance at our watermark differed from ours and was adopted.
    adopted_ledger_balance: bool
    # The projection now holds everything the ledger had booked when asked.
    current: bool


def verify(
    current: Projection | None,
    buffered: tuple[Posting, ...],
    ledger: LedgerState,
    fetched: Sequence[Posting],
    now: datetime,
) -> Verified | None:
    """Bring the projection up to what the ledger's API reported. None: nothing to build on.

    Missing postings are applied through :func:`apply_posting` (so repayments they book stop
    counting as money in flight). At the ledger's own sequence the ledger's balance wins: the
    ledger is the authority, the projection only a copy of it.
    """
    if fetched:
        applied = repair(current, buffered, fetched, now)
    elif current is not None:
        applied = Applied(current, (), buffered)
    else:
        return None
    projection = applied.projection
    adopted = (
        projection.watermark == ledger.sequence
        and projection.balance != ledger.balance
        and projection.currency == ledger.currency
    )
    if adopted:
        projection = replace(projection, balance=ledger.balance, updated_at=now)
    is_current = projection.watermark >= ledger.sequence and not applied.still_buffered
    if is_current:
        projection = replace(projection, verified_at=now)
    return Verified(
        Applied(projection, applied.applied, applied.still_buffered), adopted, is_current
    )


# --- staleness ------------------------------------------------------------------------------

StaleReason = Literal["missing", "gap", "aged"]


@dataclass(frozen=True)
class FreshnessPolicy:
    """When the projection alone may not be trusted for a confirmation.

    ``max_age`` None means the feed is trusted however long a loan stays quiet; a value
    means the projection must have matched the ledger (a posting applied, or the ledger's
    API agreeing) within that time, because the ledger may have booked more meanwhile.
    """

    max_age: timedelta | None = None


@dataclass(frozen=True)
class Stale:
    reason: StaleReason
    detail: str


def staleness(
    projection: Projection | None, has_gap: bool, now: datetime, policy: FreshnessPolicy
) -> Stale | None:
    """Why the projection cannot be trusted for ``projection``'s loan right now, if it can't.

    Stale means one of, in this order:
    - ``missing``: the feed has shown nothing for the loan (the ledger may still know it);
    - ``gap``: a posting above the watermark arrived, so at least one below it is missing;
    - ``aged``: the projection last matched the ledger more than ``max_age`` ago.
    """
    if projection is None:
        return Stale("missing", "no ledger posting for this loan has been seen")
    if has_gap:
        return Stale("gap", f"postings after sequence {projection.watermark} are missing")
    if policy.max_age is not None and now - projection.current_as_of > policy.max_age:
        age = int((now - projection.current_as_of).total_seconds())
        return Stale(
            "aged",
            f"last matched the ledger {age}s ago (max {int(policy.max_age.total_seconds())}s)",
        )
    return None


# --- answering a balance check --------------------------------------------------------------


# How long a confirmation may be relied upon unless configured otherwise
# (LEDGER_SYNC_CONFIRMATION_VALIDITY_S); the notifier refuses it afterwards.
CONFIRMATION_VALIDITY = timedelta(minutes=30)


@dataclass(frozen=True)
class CheckPolicy:
    # Differences up to this are rounding, not debt.
    tolerance: Decimal = BALANCE_TOLERANCE
    validity: timedelta = CONFIRMATION_VALIDITY


@dataclass(frozen=True)
class Confirm:
    outstanding: Decimal
    watermark: int
    valid_until: datetime
    mismatch: bool


RefusalReason = Literal["nothing_owed", "unknown_loan", "sequence_gap", "projection_stale"]


@dataclass(frozen=True)
class Refuse:
    reason: RefusalReason
    detail: str
    watermark: int
    # nothing_owed: what remains by the ledger, net of payments in flight (at most tolerance).
    outstanding: Decimal | None = None


def answer_check(
    projection: Projection | None,
    has_gap: bool,
    money_in_flight: Decimal,
    expected: Decimal,
    now: datetime,
    policy: CheckPolicy,
    currency: str | None = None,
) -> Confirm | Refuse:
    if projection is None:
        return Refuse("unknown_loan", "the ledger has booked nothing for this loan", 0)
    if has_gap:
        return Refuse(
            "sequence_gap",
            f"postings after sequence {projection.watermark} are missing",
            projection.watermark,
        )
    if currency is not None and currency != projection.currency:
        # Amounts in two currencies cannot be compared, let alone confirmed: for the ledger,
        # the loan the workflow asks about (in ``currency``) does not exist.
        return Refuse(
            "unknown_loan",
            f"the ledger keeps this loan in {projection.currency}, not {currency}",
            projection.watermark,
        )
    # Money received but not yet booked still counts: a payment in flight stops contact.
    outstanding = projection.balance - money_in_flight
    if outstanding <= policy.tolerance:
        return Refuse(
            "nothing_owed",
            "ledger balance net of payments in flight is within tolerance",
            projection.watermark,
            outstanding,
        )
    return Confirm(
        outstanding=outstanding,
        watermark=projection.watermark,
        valid_until=now + policy.validity,
        mismatch=abs(outstanding - expected) > policy.tolerance,
    )


def refuse_stale(stale: Stale, why: str, watermark: int) -> Refuse:
    """No confirmation on stale data: the workflow asks again later."""
    return Refuse("projection_stale", f"{stale.detail}; {why}", watermark)
