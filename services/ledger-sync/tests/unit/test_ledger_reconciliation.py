"""Comparing an open case with the ledger, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from ledger_sync.domain.ledger import CheckPolicy, Projection, Stale
from ledger_sync.domain.reconciliation import LastCorrection, OpenCase, reconcile

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = CheckPolicy(tolerance=Decimal("1.00"))


def case(
    known: str | None = "1000", *, currency: str = "CNY", last: LastCorrection | None = None
) -> OpenCase:
    return OpenCase(
        "L1",
        "C1",
        None if known is None else Decimal(known),
        None if known is None else currency,
        last,
    )


def ledger(balance: str, watermark: int = 4, currency: str = "CNY") -> Projection:
    return Projection("L1", currency, Decimal(balance), watermark, NOW)


def test_a_case_the_ledger_shows_as_paid_is_corrected_as_nothing_owed() -> None:
    finding = reconcile(case("1000"), ledger("0.50"), Decimal("0"), None, "", POLICY)
    assert finding.kind == "nothing_owed"
    assert finding.publish
    assert finding.outstanding == Decimal("0.50")
    assert finding.watermark == 4


def test_money_in_flight_counts_as_paid() -> None:
    finding = reconcile(case("1000"), ledger("1000"), Decimal("1000"), None, "", POLICY)
    assert finding.kind == "nothing_owed"


def test_drift_beyond_tolerance_carries_the_ledgers_amount() -> None:
    finding = reconcile(case("1000"), ledger("1250.00"), Decimal("0"), None, "", POLICY)
    assert finding.kind == "drift"
    assert finding.publish
    assert finding.outstanding == Decimal("1250.00")
    assert finding.currency == "CNY"


def test_a_difference_within_tolerance_is_in_sync() -> None:
    finding = reconcile(case("1000"), ledger("1000.99"), Decimal("0"), None, "", POLICY)
    assert finding.kind == "in_sync"
    assert not finding.publish


def test_an_unknown_collections_amount_cannot_drift() -> None:
    finding = reconcile(case(None), ledger("1250"), Decimal("0"), None, "", POLICY)
    assert finding.kind == "in_sync"
    assert "no collections amount" in finding.detail


def test_nothing_is_corrected_on_stale_data() -> None:
    stale = Stale("gap", "postings after sequence 4 are missing")
    finding = reconcile(
        case("1000"),
        ledger("0"),
        Decimal("0"),
        stale,
        "ledger API unavailable: circuit open",
        POLICY,
    )
    assert finding.kind == "skipped"
    assert not finding.publish
    assert "circuit open" in finding.detail
    assert "sequence 4" in finding.detail


def test_no_projection_is_skipped() -> None:
    stale = Stale("missing", "no ledger posting for this loan has been seen")
    finding = reconcile(case("1000"), None, Decimal("0"), stale, "no ledger API configured", POLICY)
    assert finding.kind == "skipped"
    assert finding.watermark == 0


def test_the_same_correction_is_not_repeated_every_pass() -> None:
    last = LastCorrection("nothing_owed", Decimal("0"), 4)
    finding = reconcile(case("1000", last=last), ledger("0"), Decimal("0"), None, "", POLICY)
    assert finding.kind == "nothing_owed"
    assert not finding.publish
    assert "awaiting the workflow" in finding.detail


def test_a_correction_is_repeated_once_the_ledger_moved_on() -> None:
    last = LastCorrection("drift", Decimal("1250"), 4)
    finding = reconcile(
        case("1000", last=last), ledger("1300", watermark=5), Decimal("0"), None, "", POLICY
    )
    assert finding.kind == "drift"
    assert finding.publish


def test_a_case_in_another_currency_needs_a_person() -> None:
    finding = reconcile(
        case("1000", currency="USD"), ledger("1000"), Decimal("0"), None, "", POLICY
    )
    assert finding.kind == "skipped"
    assert not finding.publish
    assert "USD" in finding.detail
