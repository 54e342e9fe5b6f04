"""The dispatcher's batch context finds a command's attempts through its per-person and
per-number index exactly as a scan of every attempt would (the scan was quadratic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from notifier.adapters.repository import BatchContext
from notifier.domain.model import Attempt

AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

attempts = st.lists(
    st.builds(
        Attempt,
        # Few commands, people and numbers, so that re-noted commands and shared numbers occur.
        command_id=st.sampled_from([f"C{i}" for i in range(8)]),
        loan_id=st.just("L1"),
        person=st.sampled_from(["B1:debtor", "B1:guarantor", "B2:debtor"]),
        channel=st.sampled_from(["sms", "voice", "email"]),
        at=st.integers(0, 600).map(lambda m: AT - timedelta(minutes=m)),
        result=st.sampled_from(["pending", "sent", "failed", "unknown"]),
        number=st.sampled_from([None, "+441", "+442"]),
        settles_by=st.none(),
    ),
    max_size=30,
)


@given(
    attempts,
    st.sampled_from(["B1:debtor", "B1:guarantor", "B2:debtor", "B3:debtor"]),
    st.sampled_from([None, "+441", "+442", "+443"]),
)
def test_indexed_attempts_are_the_scanned_ones_in_the_same_order(
    noted: list[Attempt], person: str, number: str | None
) -> None:
    ctx = BatchContext()
    for attempt in noted:
        ctx.note_attempt(attempt)
    scanned = tuple(
        a
        for a in ctx.attempts.values()
        if a.person == person or (number is not None and a.number == number)
    )
    assert ctx._attempts_of(person, number) == scanned
