"""Champion-challenger: variants as whole policies, assigned by loan id, kept for life."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.adapters.policy_file import PolicyError, load_product_policy, policy_book
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.policy import DEFAULT_POLICY, PolicyBook, ProductPolicy, Stage, assign_variant

SHIPPED = Path(__file__).resolve().parents[2] / "src/workflow/policies/consumer-loan.toml"
NOW = datetime(2026, 12, 4, 9, tzinfo=UTC)

# The challenger escalates to the formal notice at 20 days past due instead of 30, and
# asks for a smaller down payment.
VARIANTS = """
[variants.champion]
share = 50

[variants.challenger]
share = 50
stages.formal_notice.min_days_past_due = 20
stages.warning.contacts = [{ channel = "sms", recipient = "debtor", template = "warning-reminder" }]
negotiation.min_down_payment_share = "0.05"
negotiation.unreasonable.refusals = 2
"""


def _file(tmp_path: Path, variants: str = VARIANTS) -> Path:
    path = tmp_path / "consumer-loan.toml"
    path.write_text(SHIPPED.read_text() + variants)
    return path


def test_each_variant_is_a_whole_policy_with_its_overrides(tmp_path: Path) -> None:
    product = load_product_policy(_file(tmp_path))
    variants = dict(product.variants)
    assert product.shares == (("champion", 50), ("challenger", 50))
    assert variants["champion"] == replace(DEFAULT_POLICY, variant="champion")
    challenger = variants["challenger"]
    assert challenger.variant == "challenger"
    assert challenger.version == DEFAULT_POLICY.version
    assert challenger.for_stage(Stage.FORMAL_NOTICE).min_days_past_due == 20
    assert [c.channel for c in challenger.for_stage(Stage.WARNING).contacts] == ["sms"]
    assert challenger.negotiation.standard.min_down_payment_share == Decimal("0.05")
    assert challenger.negotiation.unreasonable.refusals == 2
    # Untouched keys are the base's, one level into sub-tables too.
    assert (
        challenger.negotiation.unreasonable.period == DEFAULT_POLICY.negotiation.unreasonable.period
    )
    assert challenger.for_stage(Stage.LITIGATION) == DEFAULT_POLICY.for_stage(Stage.LITIGATION)


@pytest.mark.parametrize(
    ("variants", "says"),
    [
        ("[variants.a]\nshare = 50\n[variants.b]\nshare = 40\n", "add up to 90"),
        ("[variants.a]\nshare = 100\nescalation_dayz = 3\n", "cannot set 'escalation_dayz'"),
        ("[variants.a]\nshare = 100\nversion = 'x'\n", "cannot set 'version'"),
        ("[variants.a]\nshare = 100\nstages.lawsuit.min_days_past_due = 3\n", "unknown stage"),
        ("[variants.a]\nshare = 100\nstages.warning.max_days = 3\n", "unknown stage keys"),
        ("[variants.a]\nshare = 100\nnegotiation.down_payment = '0.1'\n", "negotiation.down"),
        ("[variants.a]\nshare = '100'\n", "whole percent"),
        # Each variant is validated as a whole policy: thresholds must not decrease.
        ("[variants.a]\nshare = 100\nstages.formal_notice.min_days_past_due = 70\n", "decrease"),
        ("[variants.a]\nshare = 100\nnegotiation.min_down_payment_share = '2'\n", "between 0"),
    ],
)
def test_a_bad_variant_is_refused(tmp_path: Path, variants: str, says: str) -> None:
    with pytest.raises(PolicyError, match=says):
        load_product_policy(_file(tmp_path, variants))


def test_a_file_without_variants_has_none() -> None:
    assert load_product_policy(SHIPPED) == ProductPolicy(DEFAULT_POLICY)


def _overdue(dpd: int, loan_id: str = "L1") -> m.OverdueReported:
    as_of = NOW + timedelta(days=dpd)
    return m.OverdueReported(
        f"e{dpd}",
        loan_id,
        "B1",
        "consumer-loan",
        "CNY",
        Decimal("100.00"),
        Decimal("1000.00"),
        dpd,
        as_of,
        "Asia/Shanghai",
        "CN",
    )


def _loan_in(variant: str, shares: tuple[tuple[str, int], ...]) -> str:
    return next(f"L{i}" for i in range(1000) if assign_variant(f"L{i}", shares) == variant)


def test_a_case_is_decided_by_its_variant(tmp_path: Path) -> None:
    book = policy_book([_file(tmp_path)])
    shares = (("champion", 50), ("challenger", 50))
    stages = {}
    for variant in ("champion", "challenger"):
        loan = _loan_in(variant, shares)
        policy = book.for_case("consumer-loan", loan, None)
        opened = d.decide(
            None, [], _overdue(5, loan), policy, NOW + timedelta(days=5), lambda s: f"id-{s}"
        )
        assert opened.case is not None
        assert opened.case.variant == variant
        later = book.for_case("consumer-loan", loan, opened.case.variant)
        moved = d.decide(
            opened.case,
            [],
            _overdue(25, loan),
            later,
            NOW + timedelta(days=25),
            lambda s: f"id2-{s}",
        )
        assert moved.case is not None
        stages[variant] = moved.case.stage
    # The challenger's shorter escalation: the formal notice at 25 days, not at 30.
    assert stages == {"champion": Stage.WARNING, "challenger": Stage.FORMAL_NOTICE}


names = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)


@st.composite
def share_sets(draw: st.DrawFn) -> tuple[tuple[str, int], ...]:
    labels = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(labels) - 1, max_size=len(labels) - 1))
    )
    bounds = [0, *cuts, 100]
    return tuple((label, bounds[i + 1] - bounds[i]) for i, label in enumerate(labels))


@given(st.text(min_size=1, max_size=40), share_sets())
def test_assignment_is_a_pure_function_of_loan_id_and_shares(
    loan_id: str, shares: tuple[tuple[str, int], ...]
) -> None:
    first = assign_variant(loan_id, shares)
    assert first == assign_variant(loan_id, shares)
    assert dict(shares)[first] > 0  # a variant with no share gets no case


@given(st.text(min_size=1, max_size=40), share_sets(), share_sets())
def test_changing_shares_moves_no_existing_case(
    loan_id: str, before: tuple[tuple[str, int], ...], after: tuple[tuple[str, int], ...]
) -> None:
    policies = {n: replace(DEFAULT_POLICY, variant=n) for n, _ in before + after}
    old = PolicyBook((ProductPolicy(DEFAULT_POLICY, before, tuple(policies.items())),))
    new = PolicyBook((ProductPolicy(DEFAULT_POLICY, after, tuple(policies.items())),))
    stored = old.for_case("consumer-loan", loan_id, None).variant
    # The case stores what it was assigned; under the new shares it keeps it.
    assert new.for_case("consumer-loan", loan_id, stored).variant == stored


@given(st.integers(0, 10**6))
def test_a_fifty_fifty_split_lands_within_five_percent(start: int) -> None:
    shares = (("champion", 50), ("challenger", 50))
    counts = Counter(assign_variant(f"LN-{start + i:08d}", shares) for i in range(1000))
    assert abs(counts["champion"] - 500) <= 50, counts
