"""The demo's early-warning line: which loans get a risk signal, and the counts it prints,
read off the case timelines."""

from __future__ import annotations

import random
from pathlib import Path

from scripts import demo
from workflow.adapters.policy_file import load_product_policy


def test_a_few_loans_that_will_fall_due_get_a_signal_and_the_demo_policy_opens_cases(
    tmp_path: Path,
) -> None:
    loans = demo.portfolio(random.Random(20261122))
    signalled = demo.early_warning_loans(loans)
    assert 10 <= len(signalled) <= 100
    assert {loan.kind for loan in signalled} == {"contacted"}  # each falls overdue later
    path = tmp_path / "consumer-loan.toml"
    path.write_text(demo.CONSUMER_LOAN_POLICY.read_text() + demo.VARIANTS)
    product = load_product_policy(path)
    for policy in (product.base, *(p for _, p in product.variants)):
        assert policy.early_warning is not None


def test_the_demo_counts_pre_delinquency_cases_from_their_timelines() -> None:
    counts = demo.early_warning_counts(
        {
            # Contacted, then overdue: an ordinary case since.
            "L-1": [
                "pre_delinquency_opened",
                "contact_intent_recorded",
                "contact_commanded",
                "pre_delinquency_ended",
                "contact_commanded",
            ],
            # Opened, the overdue report came before any contact.
            "L-2": ["pre_delinquency_opened", "contact_intent_recorded", "pre_delinquency_ended"],
            # Contacted, still pre-delinquent.
            "L-3": ["pre_delinquency_opened", "contact_commanded"],
            # The overdue report was first: an ordinary case that only noted the signal.
            "L-4": ["case_opened", "risk_signal_noted", "contact_commanded"],
        }
    )
    assert counts == {"signalled": 4, "opened": 3, "contacted": 2, "ordinary": 2}
    demo.print_early_warning(counts)
