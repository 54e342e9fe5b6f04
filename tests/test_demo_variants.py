"""The demo's champion-challenger split: its policy loads, and its 1,000 loans split 50/50
within five percentage points, each by its loan id alone."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from scripts import demo
from workflow.adapters.policy_file import load_product_policy
from workflow.domain.policy import assign_variant


def test_the_demo_splits_its_loans_fifty_fifty_within_five_percent(tmp_path: Path) -> None:
    path = tmp_path / "consumer-loan.toml"
    path.write_text(demo.CONSUMER_LOAN_POLICY.read_text() + demo.VARIANTS)
    product = load_product_policy(path)
    assert product.shares == (("champion", 50), ("challenger", 50))
    loans = demo.portfolio(random.Random(20261122))
    assert len(loans) == demo.LOANS == 1000
    counts = Counter(product.for_case(loan.loan_id, None).variant for loan in loans)
    assert counts == Counter(assign_variant(loan.loan_id, product.shares) for loan in loans)
    assert abs(counts["champion"] - 500) <= 50, counts
    assert abs(counts["challenger"] - 500) <= 50, counts


def test_the_demo_counts_cases_per_variant_from_the_summary() -> None:
    snapshot = {
        "workflow": {
            "cases": [
                {
                    "status": "open",
                    "stage": "warning",
                    "exit": None,
                    "variant": "champion",
                    "count": 3,
                },
                {
                    "status": "closed",
                    "stage": "warning",
                    "exit": "repaid",
                    "variant": "champion",
                    "count": 2,
                },
                {
                    "status": "open",
                    "stage": "warning",
                    "exit": None,
                    "variant": "challenger",
                    "count": 4,
                },
            ]
        }
    }
    assert demo.variant_counts(snapshot) == Counter({"champion": 5, "challenger": 4})
