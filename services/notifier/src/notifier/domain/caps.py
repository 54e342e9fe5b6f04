"""Frequency caps and quiet periods: when may this person be contacted again?

Pure arithmetic over the attempts the caller loaded (under a lock, see the dispatcher):
the answer is ``None`` (no cap stands in the way) or the limit that binds, with the moment
it frees. A cap reached is a deferral to that moment, never a drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from notifier.domain.model import Attempt, ContactRequest, person_key
from notifier.domain.policy import FrequencyCap, JurisdictionPolicy
from notifier.domain.window import first_instant_at

# An in-flight attempt is looked at again no sooner than this, so that a stale one (its
# dispatcher died) cannot make the dispatcher spin.
IN_FLIGHT_RECHECK = timedelta(seconds=30)
# The rule a contact is deferred under while a call to the same person about the same debt
# is still in progress (jurisdictions with a quiet period after a conversation).
CALL_IN_PROGRESS = "call_in_progress"


@dataclass(frozen=True)
class Limit:
    """A cap or quiet period that holds the contact back until ``until``."""

    rule: str
    reason: str
    until: datetime


def _in_scope(
    cap: FrequencyCap, attempt: Attempt, request: ContactRequest, person: str, number: str | None
) -> bool:
    match cap.scope:
        case "debt":
            return attempt.person == person and attempt.loan_id == request.loan_id
        case "person":
            return attempt.person == person
        case "number":
            return number is not None and attempt.number == number
    return False  # pragma: no cover - exhaustive


def _counted(cap: FrequencyCap, attempt: Attempt) -> bool:
    match cap.counts:
        case "attempts":
            return attempt.counted
        case "connected":
            return attempt.maybe_connected
        case "unanswered":
            return attempt.maybe_unanswered
    return False  # pragma: no cover - exhaustive


def _in_period(cap: FrequencyCap, attempt: Attempt, now: datetime, zone: ZoneInfo) -> bool:
    if attempt.at > now:
        return True  # clocks disagree a little between replicas: count it, never skip it
    if cap.period == "rolling":
        return attempt.at > now - cap.window
    return attempt.at.astimezone(zone).date() == now.astimezone(zone).date()


def _frees_at(cap: FrequencyCap, times: list[datetime], now: datetime, zone: ZoneInfo) -> datetime:
    if cap.period == "rolling":
        # Enough of the oldest attempts must leave the window to get below the limit.
        ordered = sorted(times)
        return ordered[len(ordered) - cap.limit] + cap.window
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return first_instant_at(tomorrow, time(0, 0), zone)


def _in_flight_until(attempts: list[Attempt], now: datetime) -> datetime:
    settles = [a.settles_by or now for a in attempts if a.result == "pending"]
    return max(min(settles, default=now), now + IN_FLIGHT_RECHECK)


def binding_limit(
    request: ContactRequest,
    rules: JurisdictionPolicy,
    attempts: tuple[Attempt, ...],
    *,
    now: datetime,
    zone: ZoneInfo,
    number: str | None,
) -> Limit | None:
    """The limit that keeps ``request`` from going out now, the one that frees last."""
    person = person_key(request.borrower_id, request.recipient)
    limits: list[Limit] = []
    for cap in rules.caps:
        if request.channel not in cap.channels:
            continue
        relevant = [
            a
            for a in attempts
            if a.command_id != request.command_id
            and a.channel in cap.channels
            and _in_scope(cap, a, request, person, number)
            and _counted(cap, a)
            and _in_period(cap, a, now, zone)
        ]
        if len(relevant) < cap.limit:
            continue
        settled = [a for a in relevant if a.result != "pending"]
        if len(settled) < cap.limit:
            # Only attempts still in flight make the count: their results may free a slot
            # (an unanswered call is not a connected one), so look again when they settle.
            limits.append(
                Limit(rules.rule(cap.name), "attempt_in_flight", _in_flight_until(relevant, now))
            )
            continue
        limits.append(
            Limit(
                rules.rule(cap.name),
                "frequency_cap",
                _frees_at(cap, [a.at for a in relevant], now, zone),
            )
        )
    for quiet in rules.quiet_periods:
        if request.channel not in quiet.channels:
            continue
        for a in attempts:
            if (
                a.command_id == request.command_id
                or a.person != person
                or a.loan_id != request.loan_id
                or not a.maybe_conversation
                or a.at <= now - quiet.length
            ):
                continue
            if a.result == "pending":
                # Not the quiet period yet (the call may go unanswered): the next contact
                # waits for this call to settle, under a rule of its own.
                limits.append(
                    Limit(
                        rules.rule(CALL_IN_PROGRESS), "call_in_progress", _in_flight_until([a], now)
                    )
                )
            else:
                # Unknown counts as a conversation: the worst case is the lawful reading.
                limits.append(
                    Limit(rules.rule(quiet.name), "quiet_after_conversation", a.at + quiet.length)
                )
    return max(limits, key=lambda limit: limit.until) if limits else None
