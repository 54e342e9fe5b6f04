"""Policies as configuration: the shipped TOML equals the built-in default."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow.adapters.policy_file import PolicyError, load_policy
from workflow.domain.policy import DEFAULT_POLICY

SHIPPED = Path(__file__).resolve().parents[2] / "src/workflow/policies/consumer-loan.toml"


def test_the_shipped_policy_file_is_the_default_policy() -> None:
    assert load_policy(SHIPPED) == DEFAULT_POLICY


def test_a_guarantor_contact_outside_the_guarantor_stage_is_refused(tmp_path: Path) -> None:
    text = SHIPPED.read_text().replace(
        '{ channel = "sms", recipient = "debtor", template = "warning-reminder" }',
        '{ channel = "sms", recipient = "guarantor", template = "warning-reminder" }',
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(PolicyError):
        load_policy(bad)


def _with(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text()
    assert old in text
    path = tmp_path / "policy.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        # A misspelt term would silently fall back to nothing.
        ("max_term_months = 6", "max_term_month = 6", "unknown negotiation keys"),
        ('min_down_payment_share = "0.10"', 'min_down_payment_share = "1.5"', "between 0 and 1"),
        # An approver may agree to more than a collector, never to less.
        ("max_term_months = 12\nwaivable", "max_term_months = 3\nwaivable", "approver's terms"),
        ("refusals = 3", "refusals = 0", "at least 1"),
        ('below_floor_share = "0.10"', 'below_floor_share = "0.50"', "below_floor_share <="),
    ],
)
def test_an_unusable_negotiation_policy_is_refused(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    with pytest.raises(PolicyError, match=says):
        load_policy(_with(tmp_path, old, new))


def test_a_jurisdictions_table_replaces_only_the_keys_it_names(tmp_path: Path) -> None:
    path = _with(
        tmp_path,
        "[negotiation.jurisdictions.UK]\nmax_term_months = 12",
        "[negotiation.jurisdictions.UK]\nmax_term_months = 12\n"
        "[negotiation.jurisdictions.UK.unreasonable]\nrefusals = 5",
    )
    negotiation = load_policy(path).negotiation
    uk = negotiation.for_jurisdiction("UK")
    assert uk.standard.max_term_months == 12
    assert uk.unreasonable.refusals == 5
    assert uk.unreasonable.period == negotiation.unreasonable.period
    assert uk.standard.min_down_payment_share == negotiation.standard.min_down_payment_share
    assert negotiation.for_jurisdiction("CN") is negotiation
