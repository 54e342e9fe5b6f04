"""When the DBOS peer holds a contact: outside the borrower's local contact hours, until
they start (the pure part of bench/peers/dbos)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from bench.peers.dbos.app import CONTACT_HOURS, seconds_until_contact_hours


def test_inside_the_hours_nothing_is_held() -> None:
    # 12:00 UTC is 13:00 in London in winter.
    assert seconds_until_contact_hours("Europe/London", datetime(2026, 12, 4, 12, tzinfo=UTC)) == 0


def test_at_night_the_contact_waits_for_eight_oclock_local() -> None:
    # 23:30 UTC is 07:30 the next day in Shanghai: half an hour to wait.
    at = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    assert seconds_until_contact_hours("Asia/Shanghai", at) == 1800
    # 21:00 in London: eleven hours to 08:00 the next morning.
    assert seconds_until_contact_hours("Europe/London", datetime(2026, 12, 4, 21, tzinfo=UTC)) == (
        11 * 3600
    )


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/London"]),
)
def test_the_wait_ends_inside_the_hours_and_within_a_day(at: datetime, zone: str) -> None:
    wait = seconds_until_contact_hours(zone, at)
    assert 0 <= wait < 24 * 3600
    if wait:
        assert (at + timedelta(seconds=wait)).astimezone(ZoneInfo(zone)).hour in CONTACT_HOURS
