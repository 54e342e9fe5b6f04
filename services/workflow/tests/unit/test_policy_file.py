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
