"""Reconciliation: does an open case still agree with the ledger? Pure.

The collections side's view of a case's balance is known here only from what passes
through ledger-sync: the amount the workflow said it expected when it last asked for a
check, then the amount ledger-sync confirmed or corrected (the workflow adopts both). A
correction always carries the ledger's figure, so a correction sent on an outdated view is
harmless: it re-asserts the truth. A missed drift is bounded too, because no contact leaves
the workflow without a fresh confirmation against the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from ledger_sync.domain.ledger import CheckPolicy, Projection, Stale

FindingKind = Literal["in_sync", "nothing_owed", "drift", "skipped"]


@dataclass(frozen=True)
class LastCorrection:
    kind: str
    outstanding: Decimal
    watermark: int


@dataclass(frozen=True)
class OpenCase:
    loan_id: str
    case_id: str
    # What the collections side last held for the loan, as far as ledger-sync knows.
    collections_outstanding: Decimal | None
    collections_currency: str | None
    last_correction: LastCorrection | None = None


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    # A BalanceCorrected must be published (kind is nothing_owed or drift).
    publish: bool
    # The ledger's outstanding net of payments in flight, when the ledger could be read.
    outstanding: Decimal | None
    currency: str | None
    watermark: int
    detail: str


def reconcile(
    case: OpenCase,
    projection: Projection | None,
    money_in_flight: Decimal,
    stale: Stale | None,
    why_stale: str,
    policy: CheckPolicy,
) -> Finding:
    """Compare one open case with the ledger; decide whether to correct it.

    ``stale`` is the projection's staleness after any attempt to refresh it from the
    ledger's API (``why_stale`` says why that did not help): nothing is ever corrected on
    stale data, the case is reported as skipped instead.
    """
    if stale is not None or projection is None:
        detail = stale.detail if stale is not None else "no projection"
        return Finding(
            "skipped",
            False,
            None,
            None,
            projection.watermark if projection else 0,
            f"{detail}; {why_stale}" if why_stale else detail,
        )
    outstanding = projection.balance - money_in_flight
    if case.collections_currency is not None and case.collections_currency != projection.currency:
        return Finding(
            "skipped",
            False,
            outstanding,
            projection.currency,
            projection.watermark,
            f"the case is in {case.collections_currency}, the ledger in "
            f"{projection.currency}: needs a person",
        )
    if outstanding <= policy.tolerance:
        return _correction("nothing_owed", case, outstanding, projection)
    known = case.collections_outstanding
    if known is not None and abs(outstanding - known) > policy.tolerance:
        return _correction("drift", case, outstanding, projection)
    return Finding(
        "in_sync",
        False,
        outstanding,
        projection.currency,
        projection.watermark,
        "" if known is not None else "no collections amount known yet",
    )


def _correction(
    kind: Literal["nothing_owed", "drift"],
    case: OpenCase,
    outstanding: Decimal,
    projection: Projection,
) -> Finding:
    last = case.last_correction
    if last is not None and (last.kind, last.outstanding, last.watermark) == (
        kind,
        outstanding,
        projection.watermark,
    ):
        # Already said exactly this; repeating it every pass would only add noise while the
        # workflow catches up. The report keeps showing the case until it closes.
        return Finding(
            kind,
            False,
            outstanding,
            projection.currency,
            projection.watermark,
            "already corrected at this watermark; awaiting the workflow",
        )
    return Finding(kind, True, outstanding, projection.currency, projection.watermark, "")
