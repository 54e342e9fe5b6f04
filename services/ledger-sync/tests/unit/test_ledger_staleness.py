"""When the projection may be trusted, and repairing it from the ledger's API, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ledger_sync.domain.ledger import (
    CheckPolicy,
    FreshnessPolicy,
    LedgerState,
    Posting,
    Projection,
    Refuse,
    answer_check,
    apply_posting,
    refuse_stale,
    repair,
    staleness,
    verify,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
HOUR = FreshnessPolicy(max_age=timedelta(hours=1))


def posting(
    seq: int, amount: str, *, kind: str = "fee", repayment_id: str | None = None
) -> Posting:
    return Posting(f"p{seq}", "L1", seq, kind, "CNY", Decimal(amount), NOW, repayment_id)


def projection(
    *,
    watermark: int = 3,
    balance: str = "900",
    updated: timedelta = timedelta(0),
    verified: timedelta | None = None,
) -> Projection:
    return Projection(
        "L1",
        "CNY",
        Decimal(balance),
        watermark,
        NOW - updated,
        None if verified is None else NOW - verified,
    )


def test_no_projection_is_stale_as_missing() -> None:
    stale = staleness(None, False, NOW, HOUR)
    assert stale is not None
    assert stale.reason == "missing"


def test_a_gap_is_stale_whatever_the_age() -> None:
    stale = staleness(projection(), True, NOW, HOUR)
    assert stale is not None
    assert stale.reason == "gap"
    assert "after sequence 3" in stale.detail


def test_a_projection_older_than_the_max_age_is_stale() -> None:
    stale = staleness(projection(updated=timedelta(hours=2)), False, NOW, HOUR)
    assert stale is not None
    assert stale.reason == "aged"


def test_exactly_the_max_age_is_still_fresh() -> None:
    assert staleness(projection(updated=timedelta(hours=1)), False, NOW, HOUR) is None


def test_a_recent_verification_by_the_ledger_keeps_a_quiet_loan_fresh() -> None:
    quiet = projection(updated=timedelta(days=30), verified=timedelta(minutes=5))
    assert staleness(quiet, False, NOW, HOUR) is None


def test_without_a_max_age_only_missing_and_gaps_are_stale() -> None:
    old = projection(updated=timedelta(days=365))
    assert staleness(old, False, NOW, FreshnessPolicy()) is None
    assert staleness(old, True, NOW, FreshnessPolicy()) is not None


def test_a_stale_refusal_says_why_and_is_never_a_confirmation() -> None:
    stale = staleness(None, False, NOW, HOUR)
    assert stale is not None
    refusal = refuse_stale(stale, "ledger API unavailable: circuit open", 0)
    assert refusal.reason == "projection_stale"
    assert "circuit open" in refusal.detail
    assert "no ledger posting" in refusal.detail


def test_repair_fills_a_gap_through_the_same_rule_as_the_feed() -> None:
    first = apply_posting(None, (), posting(1, "1000", kind="disbursement"), NOW)
    early = apply_posting(first.projection, (), posting(3, "50"), NOW)
    assert early.still_buffered
    fixed = repair(
        early.projection,
        early.still_buffered,
        [posting(2, "-100", kind="repayment", repayment_id="R1"), posting(3, "50")],
        NOW,
    )
    assert fixed.projection.watermark == 3
    assert fixed.projection.balance == Decimal("950")
    assert fixed.still_buffered == ()
    assert [p.repayment_id for p in fixed.applied] == ["R1", None]


def test_verify_marks_the_projection_verified_once_it_holds_what_the_ledger_has() -> None:
    current = projection(watermark=3, balance="900", updated=timedelta(days=3))
    result = verify(current, (), LedgerState("CNY", Decimal("950"), 4), [posting(4, "50")], NOW)
    assert result is not None
    assert result.current
    assert not result.adopted_ledger_balance
    assert result.applied.projection.verified_at == NOW
    assert result.applied.projection.balance == Decimal("950")


def test_verify_with_postings_missing_from_the_ledgers_answer_stays_unverified() -> None:
    current = projection(watermark=3)
    result = verify(current, (), LedgerState("CNY", Decimal("1000"), 6), [posting(5, "50")], NOW)
    assert result is not None
    assert not result.current
    assert result.applied.projection.verified_at is None
    assert (
        staleness(result.applied.projection, bool(result.applied.still_buffered), NOW, HOUR)
        is not None
    )


def test_at_the_same_sequence_the_ledgers_balance_wins() -> None:
    current = projection(watermark=3, balance="900")
    result = verify(current, (), LedgerState("CNY", Decimal("875.50"), 3), [], NOW)
    assert result is not None
    assert result.adopted_ledger_balance
    assert result.applied.projection.balance == Decimal("875.50")


def test_verify_has_nothing_to_build_on_without_projection_or_postings() -> None:
    assert verify(None, (), LedgerState("CNY", Decimal("10"), 2), [], NOW) is None


def test_a_confirmation_is_never_given_in_another_currency() -> None:
    answer = answer_check(
        replace(projection(), currency="USD"),
        False,
        Decimal("0"),
        Decimal("900"),
        NOW,
        CheckPolicy(),
        currency="CNY",
    )
    assert isinstance(answer, Refuse)
    assert "USD" in answer.detail


def test_nothing_owed_carries_what_remains() -> None:
    answer = answer_check(
        projection(balance="100.40"), False, Decimal("100"), Decimal("100.40"), NOW, CheckPolicy()
    )
    assert isinstance(answer, Refuse)
    assert answer.reason == "nothing_owed"
    assert answer.outstanding == Decimal("0.40")
