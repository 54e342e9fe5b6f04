"""Delivery receipts: what a provider's later report of a message or call does to its
attempt. Pure; the route verifies, the application layer loads and stores.

A receipt arrives minutes after the hand-over, by callback, maybe twice, maybe late, maybe
about something we never sent (another system's traffic on the same account, a test from
the provider). So:

- a receipt already seen (same provider, same receipt id) does nothing a second time;
- one for no attempt of ours is kept and counted as unmatched, never an error (a provider
  retries an error answer, and that would be the error loop);
- one for an attempt still in flight or in doubt proves the hand-over: it settles it as
  sent, with the receipt's result;
- one for an attempt handed over without a final result yet gives it that result;
- one for an attempt that already has its final result, or for a command that ended
  otherwise, is late: kept and counted, no effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from notifier.domain.model import AttemptResult, DeliveryStatus, DispatchStatus

ReceiptStatus = Literal["delivered", "failed", "answered", "unanswered"]
Effect = Literal["applied", "late", "unmatched"]

# Results that a receipt may still give: handed over, nothing more known yet.
_OPEN_RESULTS: frozenset[AttemptResult] = frozenset({"pending", "sent", "unknown"})
# Statuses in which the hand-over itself is not recorded yet.
_UNSETTLED = (DispatchStatus.SENDING, DispatchStatus.IN_DOUBT)


@dataclass(frozen=True)
class Receipt:
    provider: str
    receipt_id: str
    # Our command id, which we sent as the provider's reference and idempotency key.
    reference: str | None
    # The provider's own id of the message or call.
    provider_ref: str | None
    status: ReceiptStatus
    occurred_at: datetime


@dataclass(frozen=True)
class Apply:
    result: AttemptResult
    # The hand-over was not recorded (crash, in doubt): record it as sent now.
    settles_hand_over: bool
    # What the outcome event says.
    announced: DeliveryStatus | Literal["failed"]
    effect: Effect = "applied"


@dataclass(frozen=True)
class NoEffect:
    effect: Effect


def receipt_effect(
    status: DispatchStatus | None, result: AttemptResult | None, receipt: Receipt
) -> Apply | NoEffect:
    """What ``receipt`` does to the attempt of a command in ``status`` whose attempt has
    ``result`` (both None: no such attempt)."""
    if status is None or result is None:
        return NoEffect("unmatched")
    if status in _UNSETTLED:
        return Apply(receipt.status, settles_hand_over=True, announced=receipt.status)
    if status is DispatchStatus.SENT and result in _OPEN_RESULTS:
        return Apply(receipt.status, settles_hand_over=False, announced=receipt.status)
    return NoEffect("late")
