"""Projection in sequence, and the answer to a balance check, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from ledger_sync.domain.ledger import (
    CheckPolicy,
    Confirm,
    Posting,
    Projection,
    Refuse,
    answer_check,
    apply_posting,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def posting(seq: int, amount: str) -> Posting:
    return Posting(f"p{seq}", "L1", seq, "fee", "CNY", Decimal(amount), NOW)


def test_a_posting_ahead_of_sequence_waits_and_is_applied_when_the_gap_fills() -> None:
    first = apply_posting(None, (), posting(1, "100"), NOW)
    early = apply_posting(first.projection, (), posting(3, "5"), NOW)
    assert early.projection.watermark == 1
    assert len(early.still_buffered) == 1
    filled = apply_posting(early.projection, early.still_buffered, posting(2, "10"), NOW)
    assert filled.projection.watermark == 3
    assert filled.projection.balance == Decimal("115")
    assert filled.still_buffered == ()


def test_a_replayed_posting_changes_nothing() -> None:
    first = apply_posting(None, (), posting(1, "100"), NOW)
    again = apply_posting(first.projection, (), posting(1, "100"), NOW)
    assert again.projection.balance == Decimal("100")
    assert again.applied == ()


@given(st.permutations(list(range(1, 9))))
def test_any_arrival_order_projects_the_same_balance(order: list[int]) -> None:
    projection: Projection | None = None
    buffered: tuple[Posting, ...] = ()
    for seq in order:
        result = apply_posting(projection, buffered, posting(seq, str(seq * 10)), NOW)
        projection, buffered = result.projection, result.still_buffered
    assert projection is not None
    assert projection.watermark == 8
    assert projection.balance == Decimal(sum(range(1, 9)) * 10)


def projection(balance: str) -> Projection:
    return Projection("L1", "CNY", Decimal(balance), 4, NOW)


def test_money_in_flight_counts_against_the_balance() -> None:
    answer = answer_check(
        projection("500"), False, Decimal("500"), Decimal("500"), NOW, CheckPolicy()
    )
    assert isinstance(answer, Refuse)
    assert answer.reason == "nothing_owed"


def test_a_gap_blocks_confirmation() -> None:
    answer = answer_check(projection("500"), True, Decimal("0"), Decimal("500"), NOW, CheckPolicy())
    assert isinstance(answer, Refuse)
    assert answer.reason == "sequence_gap"


def test_a_confirmation_carries_watermark_and_validity_and_flags_a_mismatch() -> None:
    policy = CheckPolicy()
    answer = answer_check(projection("500"), False, Decimal("100"), Decimal("500"), NOW, policy)
    assert isinstance(answer, Confirm)
    assert answer.outstanding == Decimal("400")
    assert answer.watermark == 4
    assert answer.valid_until == NOW + policy.validity
    assert answer.mismatch


def test_an_unknown_loan_is_never_confirmed() -> None:
    answer = answer_check(None, False, Decimal("0"), Decimal("1"), NOW, CheckPolicy())
    assert isinstance(answer, Refuse)
    assert answer.reason == "unknown_loan"
