"""Contact windows in the borrower's own time zone, correct across daylight-saving changes.

The next allowed moment is found on the local calendar (the next local date at the window's
start) and only then turned into an instant. Adding hours to ``now`` instead would be off by
one hour whenever a DST change lies in between.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.domain.policy import ContactWindow


def load_zone(key: str) -> ZoneInfo | None:
    """The IANA zone named ``key``, or None when it is unknown or malformed."""
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def within(instant: datetime, zone: ZoneInfo, window: ContactWindow) -> bool:
    return window.contains(instant.astimezone(zone).time().replace(tzinfo=None))


def first_instant_at(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the local clock on ``day`` shows ``wall`` or later."""
    naive = datetime.combine(day, wall)
    earlier = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if earlier <= later:
        # Unambiguous, or repeated after a fall-back change: the first occurrence counts.
        return earlier
    # ``wall`` falls into a spring-forward gap and never shows on the clock: the first moment
    # past it is the transition itself, which lies between the two readings. Transitions sit
    # on whole seconds, so a bisection on seconds finds it exactly.
    low, high = int(later.timestamp()), int(earlier.timestamp())
    while low < high:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= naive:
            high = mid
        else:
            low = mid + 1
    return datetime.fromtimestamp(low, UTC)


def next_allowed(instant: datetime, zone: ZoneInfo, window: ContactWindow) -> datetime:
    """``instant`` itself when inside the window, else the next window start (UTC)."""
    if within(instant, zone, window):
        return instant.astimezone(UTC)
    local = instant.astimezone(zone)
    day = local.date()
    # A few days of look-ahead absorbs any calendar oddity (a zone skipping a whole date,
    # as Samoa did in 2011); in practice the first or second candidate is the answer.
    for offset in range(4):
        candidate = first_instant_at(day + timedelta(days=offset), window.start, zone)
        if candidate > instant and within(candidate, zone, window):
            return candidate
    raise ValueError("no allowed moment within four days")  # pragma: no cover
