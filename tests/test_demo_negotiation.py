"""The demo's proposals: what the portal sends is well formed and says what it means."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from scripts.demo import proposal
from workflow.entrypoints.proposals import ProposalRequest

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


@given(
    owed=st.decimals(min_value=Decimal("20.00"), max_value=Decimal("5000.00"), places=2),
    share=st.sampled_from([Decimal("0.10"), Decimal("0.05"), Decimal("0.02")]),
)
def test_payments_add_up_to_what_is_owed_within_six_months(owed: Decimal, share: Decimal) -> None:
    body = ProposalRequest.model_validate(proposal(owed, share, NOW))
    payments = [body.down_payment, *body.instalments]
    assert sum(p.amount for p in payments) == owed
    assert body.down_payment.amount == (owed * share).quantize(Decimal("0.01"), rounding=ROUND_UP)
    assert all(p.amount > 0 for p in body.instalments)
    dates = [p.due_at for p in payments]
    assert dates == sorted(dates)
    assert dates[0] > NOW
    assert dates[-1] - NOW < timedelta(days=183)
