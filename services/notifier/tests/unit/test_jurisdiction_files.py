"""Every jurisdiction file is a sound policy, and a new jurisdiction is a file, not code."""

from __future__ import annotations

import shutil
from datetime import datetime, time, timedelta
from decimal import Decimal
from importlib.resources import as_file, files
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import pytest

from collections_kit.jurisdictions import load_jurisdictions
from notifier.domain import templates
from notifier.domain.decide import Defer, Send, decide
from notifier.domain.model import ContactDetails, ContactRequest, DispatchContext, Language, Party
from notifier.domain.policy import JurisdictionPolicy, jurisdiction_from_mapping
from notifier.entrypoints.bootstrap import load_policy
from notifier.settings import NotifierSettings

SHIPPED = load_jurisdictions()
# No regulator we follow allows contact earlier or later than this, and none forbids a whole
# day: a window outside it is a typo (02:00 for 20:00), not a rule.
EARLIEST, LATEST = time(7, 0), time(22, 0)

GERMANY = """\
window = { start = "08:00", end = "20:00" }
source = "Test only: a jurisdiction added by a file"

[[caps]]
name = "calls_per_week"
counts = "attempts"
scope = "debt"
period = "rolling"
days = 7
limit = 3
channels = ["voice"]
"""


def rules_of(code: str) -> JurisdictionPolicy:
    return jurisdiction_from_mapping(code, SHIPPED[code])


@pytest.mark.parametrize("code", sorted(SHIPPED))
def test_a_shipped_jurisdiction_file_is_a_sound_policy(code: str) -> None:
    rules = rules_of(code)
    assert EARLIEST <= rules.window.start < rules.window.end <= LATEST
    assert rules.source, "every jurisdiction says where its numbers come from"
    for cap in rules.caps:
        assert cap.limit >= 1, cap.name
        assert cap.days >= 1, cap.name
    for quiet in rules.quiet_periods:
        assert quiet.days >= 1, quiet.name
    names = (
        [c.name for c in rules.caps]
        + [q.name for q in rules.quiet_periods]
        + ([rules.validation_notice.name] if rules.validation_notice else [])
    )
    assert len(names) == len(set(names)), "a decision names its rule: names are unique"


def test_every_validation_notice_has_its_text_in_every_language() -> None:
    notices = {c: n for c in SHIPPED if (n := rules_of(c).validation_notice) is not None}
    assert notices, "US sends one (Reg F)"
    missing = [
        (code, notice.template, language)
        for code, notice in notices.items()
        for language in get_args(Language)
        if not templates.available(notice.template, language)
    ]
    assert missing == []


def request(at: datetime, code: str, zone: str) -> ContactRequest:
    return ContactRequest(
        command_id="cmd-1",
        intent_id="int-1",
        case_id="case-1",
        loan_id="L1",
        borrower_id="B1",
        recipient="debtor",
        channel="voice",
        stage="warning",
        template="warning-reminder",
        currency="EUR",
        amount_due=Decimal("990.00"),
        confirmation_id="conf-1",
        ledger_watermark=7,
        confirmed_at=at,
        confirmation_valid_until=at + timedelta(hours=1),
        borrower_time_zone=zone,
        jurisdiction=code,
        issued_at=at,
    )


def a_directory_with(tmp_path: Path, **extra: str) -> Path:
    with as_file(files("collections_kit.jurisdictions")) as shipped:
        for path in Path(shipped).glob("*.toml"):
            shutil.copy(path, tmp_path / path.name)
    for code, text in extra.items():
        (tmp_path / f"{code}.toml").write_text(text)
    return tmp_path


def test_a_jurisdiction_added_by_a_file_is_applied_without_code(tmp_path: Path) -> None:
    policy = load_policy(NotifierSettings(jurisdictions_dir=a_directory_with(tmp_path, DE=GERMANY)))
    assert set(policy.jurisdictions) == {"CN", "US", "UK", "DE"}
    context = DispatchContext(
        details=ContactDetails(
            borrower_id="B1", language="en", debtor=Party(phone="+4915112345678")
        ),
        validation="sent",
    )
    berlin = ZoneInfo("Europe/Berlin")
    morning = datetime(2026, 11, 23, 10, 0, tzinfo=berlin)
    evening = datetime(2026, 11, 23, 20, 30, tzinfo=berlin)
    de = request(morning, "DE", "Europe/Berlin")
    assert decide(de, context, morning, policy) == Send("DE.contact_window")
    late = request(evening, "DE", "Europe/Berlin")
    assert decide(late, context, evening, policy) == Defer(
        datetime(2026, 11, 24, 8, 0, tzinfo=berlin), "DE.contact_window"
    )
    # The shipped jurisdictions are read from the same directory, unchanged.
    assert policy.jurisdictions["US"] == rules_of("US")


def test_a_mistake_in_a_jurisdiction_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    wrong = GERMANY.replace("limit = 3", "limit = 0")
    with pytest.raises(ValueError, match="cap calls_per_week: limit must be at least 1"):
        load_policy(NotifierSettings(jurisdictions_dir=a_directory_with(tmp_path, DE=wrong)))
    no_window = GERMANY.replace('window = { start = "08:00", end = "20:00" }\n', "")
    with pytest.raises(ValueError, match=r"jurisdiction DE: missing keys \['window'\]"):
        load_policy(NotifierSettings(jurisdictions_dir=a_directory_with(tmp_path, DE=no_window)))
