"""A new jurisdiction is a configuration file, not code."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from notifier.domain.policy import US
from notifier.entrypoints.bootstrap import load_policy
from notifier.settings import NotifierSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "policy.example.toml"


def test_the_example_policy_file_adds_a_jurisdiction_to_the_built_in_ones() -> None:
    policy = load_policy(NotifierSettings(policy_file=EXAMPLE))
    assert set(policy.jurisdictions) == {"CN", "US", "UK", "SG"}
    sg = policy.jurisdictions["SG"]
    assert sg.window_rule == "SG.contact_window"
    assert [(c.name, c.limit, c.days) for c in sg.caps] == [("calls_per_week", 2, 7)]
    assert sg.quiet_periods[0].length == timedelta(days=3)
    assert sg.validation_notice is not None
    assert sg.validation_notice.channels == {"letter"}
    assert sg.validation_notice.recheck == timedelta(hours=1)
    assert policy.jurisdictions["US"] == US


def test_without_a_file_the_built_in_jurisdictions_apply() -> None:
    assert set(load_policy(NotifierSettings()).jurisdictions) == {"CN", "US", "UK"}


def test_a_file_can_change_a_built_in_number(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[jurisdictions.CN]\nwindow = { start = "09:00", end = "21:00" }\n')
    cn = load_policy(NotifierSettings(policy_file=path)).jurisdictions["CN"]
    # The file replaces CN whole: what it does not name (the caps) is gone, so a file
    # overriding a built-in jurisdiction must restate everything it keeps.
    assert cn.window.start.hour == 9
    assert cn.caps == ()


def test_a_wrong_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[jurisdictions.XX]\nwindow = { start = "08:00", end = "21:00" }\ncap = []\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_policy(NotifierSettings(policy_file=path))
