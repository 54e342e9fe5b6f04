"""Caps, quiet periods, the validation notice, holds, opt-outs and policy as data, at their
edges, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifier.domain.decide import (
    RULE_CLOSED,
    RULE_DO_NOT_CONTACT,
    RULE_HOLD,
    RULE_OPT_OUT,
    RULE_PARTY,
    Block,
    Cancel,
    Defer,
    Send,
    decide,
)
from notifier.domain.model import (
    Attempt,
    AttemptResult,
    ChannelName,
    Closure,
    ContactDetails,
    ContactRequest,
    DispatchContext,
    Hold,
    Party,
    Preferences,
    number_key,
)
from notifier.domain.policy import (
    BUILT_IN,
    DispatchPolicy,
    jurisdiction_from_mapping,
    jurisdictions_from_mapping,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
POLICY = DispatchPolicy()
PHONE = "+8613812341234"
DETAILS = ContactDetails(
    borrower_id="B1",
    language="en",
    debtor=Party(email="a@example.com", phone=PHONE, postal_address="1 Road"),
    guarantor=Party(name="Li", phone="+8613912345678"),
)


def request(at: datetime, **changes: Any) -> ContactRequest:
    base = ContactRequest(
        command_id="cmd-new",
        intent_id="int-1",
        case_id="case-1",
        loan_id="L1",
        borrower_id="B1",
        recipient="debtor",
        channel="voice",
        stage="warning",
        template="warning-reminder",
        currency="CNY",
        amount_due=Decimal("990.00"),
        confirmation_id="conf-1",
        ledger_watermark=7,
        confirmed_at=at,
        confirmation_valid_until=at + timedelta(hours=1),
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        issued_at=at,
    )
    return replace(base, **changes)


def us(at: datetime, **changes: Any) -> ContactRequest:
    return request(
        at, jurisdiction="US", borrower_time_zone="America/New_York", currency="USD", **changes
    )


def ctx(**changes: Any) -> DispatchContext:
    return replace(DispatchContext(details=DETAILS, validation="sent"), **changes)


_n = 0


def attempt(
    at: datetime,
    channel: ChannelName = "voice",
    result: AttemptResult = "answered",
    *,
    loan_id: str = "L1",
    person: str = "B1:debtor",
    number: str | None = None,
    settles_by: datetime | None = None,
) -> Attempt:
    global _n
    _n += 1
    if number is None and channel in ("sms", "voice"):
        number = number_key(PHONE)
    return Attempt(f"a{_n}", loan_id, person, channel, at, result, number, settles_by)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


# --- CN: connected calls per debtor per day ---------------------------------------------------


def test_cn_third_connected_call_of_the_day_goes_the_fourth_waits_for_tomorrow_0800() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 15, 0)
    two = tuple(attempt(now - timedelta(hours=h)) for h in (1, 2))
    assert decide(request(now), ctx(attempts=two), now, POLICY) == Send("CN.contact_window")
    three = (*two, attempt(now - timedelta(hours=3)))
    assert decide(request(now), ctx(attempts=three), now, POLICY) == Defer(
        local(SHANGHAI, 2026, 11, 24, 8, 0), "CN.connected_calls_per_day", "frequency_cap"
    )


def test_cn_connected_calls_count_across_the_debtors_loans_but_not_unanswered_ones() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 15, 0)
    other_loan = tuple(attempt(now - timedelta(hours=h), loan_id="L-other") for h in (1, 2, 3))
    assert decide(request(now), ctx(attempts=other_loan), now, POLICY).outcome == "deferred"
    unanswered = tuple(attempt(now - timedelta(hours=h), result="unanswered") for h in (1, 2, 3))
    assert decide(request(now), ctx(attempts=unanswered), now, POLICY).outcome == "sent"
    # Text messages are not calls: the cap holds back calls only, and never counts texts.
    texts = tuple(
        attempt(now - timedelta(hours=h), channel="sms", result="delivered") for h in (1, 2, 3, 4)
    )
    assert decide(request(now), ctx(attempts=texts), now, POLICY).outcome == "sent"


def test_cn_the_day_is_the_borrowers_local_day_not_the_servers() -> None:
    # A CN borrower living in New York: at 20:00 there it is already tomorrow in UTC.
    now = local(NEW_YORK, 2026, 11, 23, 20, 0)
    morning = tuple(attempt(local(NEW_YORK, 2026, 11, 23, 9, m)) for m in (0, 10, 20))
    assert now.astimezone(UTC).date() != morning[0].at.astimezone(UTC).date()
    in_ny = request(now, borrower_time_zone="America/New_York")
    assert decide(in_ny, ctx(attempts=morning), now, POLICY) == Defer(
        local(NEW_YORK, 2026, 11, 24, 8, 0), "CN.connected_calls_per_day", "frequency_cap"
    )
    # Yesterday evening's calls, though the same UTC date as this morning's, are yesterday.
    next_morning = local(NEW_YORK, 2026, 11, 24, 8, 0)
    assert (
        decide(
            replace(in_ny, confirmation_valid_until=next_morning + timedelta(hours=1)),
            ctx(attempts=morning),
            next_morning,
            POLICY,
        ).outcome
        == "sent"
    )


def test_cn_guarantor_calls_do_not_count_against_the_debtor() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 15, 0)
    theirs = tuple(
        attempt(now - timedelta(hours=h), person="B1:guarantor", number="x") for h in (1, 2, 3)
    )
    assert decide(request(now), ctx(attempts=theirs), now, POLICY).outcome == "sent"


# --- CN: unanswered attempts per number per day -----------------------------------------------


def test_cn_six_unanswered_calls_to_a_number_stop_calls_to_it_until_tomorrow() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 15, 0)
    five = tuple(attempt(now - timedelta(minutes=10 * i), result="unanswered") for i in range(1, 6))
    assert decide(request(now), ctx(attempts=five), now, POLICY).outcome == "sent"
    six = (*five, attempt(now - timedelta(minutes=60), result="unanswered"))
    assert decide(request(now), ctx(attempts=six), now, POLICY) == Defer(
        local(SHANGHAI, 2026, 11, 24, 8, 0),
        "CN.unanswered_calls_per_number_per_day",
        "frequency_cap",
    )


def test_cn_the_per_number_cap_counts_whoever_called_that_number() -> None:
    # The same number is someone else's contact too (another borrower's guarantor).
    now = local(SHANGHAI, 2026, 11, 23, 15, 0)
    others = tuple(
        attempt(
            now - timedelta(minutes=i), result="unanswered", person="B9:guarantor", loan_id="L9"
        )
        for i in range(1, 7)
    )
    decision = decide(request(now), ctx(attempts=others), now, POLICY)
    assert isinstance(decision, Defer)
    assert decision.rule == "CN.unanswered_calls_per_number_per_day"


# --- US: 7 attempts in 7 days, across channels -------------------------------------------------


def test_us_seven_attempts_in_seven_days_across_calls_and_texts() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    first = now - timedelta(days=6, hours=1)
    mixed = (
        attempt(first, "voice", "unanswered"),
        *(attempt(now - timedelta(days=d), "voice", "unanswered") for d in (5, 4, 3)),
        *(attempt(now - timedelta(days=d), "sms", "delivered") for d in (2, 1)),
    )
    assert len(mixed) == 6
    assert decide(us(now), ctx(attempts=mixed), now, POLICY) == Send("US.contact_window")
    seven = (*mixed, attempt(now - timedelta(hours=3), "sms", "delivered"))
    for channel in ("voice", "sms"):
        decision = decide(us(now, channel=channel), ctx(attempts=seven), now, POLICY)
        # Frees when the oldest leaves the 7-day window: 11:00 on the 30th, inside hours.
        assert decision == Defer(first + timedelta(days=7), "US.reg_f_7_in_7", "frequency_cap"), (
            channel
        )
    # E-mail is not an attempt on the phone and is not held back.
    assert decide(us(now, channel="email"), ctx(attempts=seven), now, POLICY).outcome == "sent"


def test_us_the_cap_frees_exactly_seven_days_after_the_oldest_attempt() -> None:
    first = local(NEW_YORK, 2026, 11, 16, 11, 0)
    seven = tuple(attempt(first + timedelta(hours=h), "voice", "unanswered") for h in range(7))
    just_before = first + timedelta(days=7) - timedelta(seconds=1)
    assert decide(us(just_before), ctx(attempts=seven), just_before, POLICY).outcome == "deferred"
    at = first + timedelta(days=7)
    assert decide(us(at), ctx(attempts=seven), at, POLICY).outcome == "sent"


def test_us_the_cap_is_per_debt_and_a_failed_attempt_does_not_count() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    other_debt = tuple(
        attempt(now - timedelta(hours=h), "voice", "unanswered", loan_id="L2") for h in range(1, 8)
    )
    assert decide(us(now), ctx(attempts=other_debt), now, POLICY).outcome == "sent"
    refused = tuple(attempt(now - timedelta(hours=h), "sms", "failed") for h in range(1, 8))
    assert decide(us(now), ctx(attempts=refused), now, POLICY).outcome == "sent"


def test_us_a_freed_cap_at_night_waits_for_the_window() -> None:
    first = local(NEW_YORK, 2026, 11, 16, 22, 30)  # a late attempt cannot happen, but a
    seven = tuple(
        attempt(first + timedelta(minutes=m), "sms", "delivered")  # clock can lie
        for m in range(7)
    )
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    decision = decide(us(now, channel="sms"), ctx(attempts=seven), now, POLICY)
    assert decision == Defer(
        local(NEW_YORK, 2026, 11, 24, 8, 0), "US.reg_f_7_in_7", "frequency_cap"
    )


def test_in_flight_attempts_count_so_that_replicas_cannot_both_slip_under_the_cap() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    six = tuple(attempt(now - timedelta(hours=h), "sms", "delivered") for h in range(1, 7))
    pending = attempt(now, "sms", "pending", settles_by=now + timedelta(minutes=2))
    decision = decide(us(now, channel="sms"), ctx(attempts=(*six, pending)), now, POLICY)
    assert decision == Defer(now + timedelta(minutes=2), "US.reg_f_7_in_7", "attempt_in_flight")


# --- US: the quiet period after a conversation -------------------------------------------------


def test_us_no_call_or_text_within_seven_days_after_a_conversation() -> None:
    talked = local(NEW_YORK, 2026, 11, 16, 10, 0)
    conversation = (attempt(talked, "voice", "answered"),)
    just_before = talked + timedelta(days=7) - timedelta(seconds=1)
    for channel in ("voice", "sms"):
        decision = decide(
            us(just_before, channel=channel), ctx(attempts=conversation), just_before, POLICY
        )
        assert decision == Defer(
            talked + timedelta(days=7),
            "US.reg_f_quiet_after_conversation",
            "quiet_after_conversation",
        )
    at = talked + timedelta(days=7)
    assert decide(us(at), ctx(attempts=conversation), at, POLICY).outcome == "sent"
    # A letter or an e-mail is not a call.
    assert (
        decide(
            us(just_before, channel="email"), ctx(attempts=conversation), just_before, POLICY
        ).outcome
        == "sent"
    )


def test_us_an_unanswered_call_starts_no_quiet_period_an_unknown_one_does() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    missed = (attempt(now - timedelta(days=1), "voice", "unanswered"),)
    assert decide(us(now), ctx(attempts=missed), now, POLICY).outcome == "sent"
    unknown = (attempt(now - timedelta(days=1), "voice", "unknown"),)
    assert decide(us(now), ctx(attempts=unknown), now, POLICY).outcome == "deferred"


def test_us_a_call_in_progress_holds_the_next_until_it_settles() -> None:
    """Under its own rule: no quiet period has begun while the call may still be ringing."""
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    ringing = (attempt(now, "voice", "pending", settles_by=now + timedelta(minutes=2)),)
    assert decide(us(now), ctx(attempts=ringing), now, POLICY) == Defer(
        now + timedelta(minutes=2), "US.call_in_progress", "call_in_progress"
    )


def test_us_the_quiet_period_is_per_debt() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    about_other = (attempt(now - timedelta(days=1), "voice", "answered", loan_id="L2"),)
    assert decide(us(now), ctx(attempts=about_other), now, POLICY).outcome == "sent"


# --- US: the validation notice comes first ------------------------------------------------------


def test_us_the_first_letter_or_email_to_a_debtor_is_the_validation_notice() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    for channel in ("email", "letter"):
        decision = decide(us(now, channel=channel), ctx(validation="none"), now, POLICY)
        assert decision == Send(
            "US.reg_f_validation_notice", "validation_notice", template="validation-notice"
        )


def test_us_calls_and_texts_wait_for_the_validation_notice() -> None:
    now = local(NEW_YORK, 2026, 11, 23, 12, 0)
    for validation in ("none", "in_flight"):
        decision = decide(us(now, channel="sms"), ctx(validation=validation), now, POLICY)
        assert decision == Defer(
            now + timedelta(minutes=15), "US.reg_f_validation_notice", "awaiting_validation_notice"
        )
    # While one notice is on its way, a second letter does not become another one.
    assert (
        decide(us(now, channel="email"), ctx(validation="in_flight"), now, POLICY).outcome
        == "deferred"
    )
    # At 20:50 the look-again time falls after 21:00: it waits for the morning.
    late = local(NEW_YORK, 2026, 11, 23, 20, 50)
    waiting = decide(us(late, channel="sms"), ctx(validation="none"), late, POLICY)
    assert isinstance(waiting, Defer)
    assert waiting.until == local(NEW_YORK, 2026, 11, 24, 8, 0)
    assert decide(us(now, channel="sms"), ctx(validation="sent"), now, POLICY).outcome == "sent"


def test_the_validation_notice_is_a_us_rule_only() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    assert (
        decide(request(now, channel="sms"), ctx(validation="none"), now, POLICY).outcome == "sent"
    )


# --- holds and closures ---------------------------------------------------------------------------


def test_a_hold_in_force_cancels_every_contact() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    hold = Hold(
        "h1", "breathing_space", held_at=now - timedelta(days=1), until=now + timedelta(days=59)
    )
    decision = decide(request(now, channel="email"), ctx(holds=(hold,)), now, POLICY)
    assert decision == Cancel("case_held_breathing_space", RULE_HOLD)


def test_after_a_resume_only_commands_issued_after_it_may_go_out() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    resumed = now - timedelta(hours=1)
    hold = Hold("h1", "hardship", held_at=now - timedelta(days=3), resumed_at=resumed)
    parked = request(now, issued_at=now - timedelta(days=4))
    assert decide(parked, ctx(holds=(hold,)), now, POLICY).outcome == "cancelled"
    at_resume = request(now, issued_at=resumed)
    assert decide(at_resume, ctx(holds=(hold,)), now, POLICY).outcome == "cancelled"
    fresh = request(now, issued_at=resumed + timedelta(seconds=1))
    assert decide(fresh, ctx(holds=(hold,)), now, POLICY).outcome == "sent"


def test_a_breathing_space_that_ran_out_ends_the_hold_by_itself() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    ended = now - timedelta(minutes=1)
    hold = Hold("h1", "breathing_space", held_at=now - timedelta(days=60), until=ended)
    assert (
        decide(
            request(now, issued_at=ended + timedelta(seconds=1)), ctx(holds=(hold,)), now, POLICY
        ).outcome
        == "sent"
    )
    assert (
        decide(
            request(now, issued_at=ended - timedelta(seconds=1)), ctx(holds=(hold,)), now, POLICY
        ).outcome
        == "cancelled"
    )


def test_a_closed_case_cancels_what_was_issued_before_it_closed() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    closure = Closure("settled", now - timedelta(minutes=5))
    assert decide(
        request(now, issued_at=now - timedelta(minutes=6)), ctx(closures=(closure,)), now, POLICY
    ) == Cancel("case_closed_settled", RULE_CLOSED)
    assert decide(request(now), ctx(closures=(closure,)), now, POLICY).outcome == "sent"


# --- recipients, opt-outs, do-not-contact ---------------------------------------------------------


def test_a_guarantor_command_before_the_guarantor_stage_is_blocked() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    early = request(now, recipient="guarantor", template="guarantor-notice", stage="formal_notice")
    assert decide(early, ctx(), now, POLICY).outcome == "blocked"
    assert decide(replace(early, stage="guarantor_recourse"), ctx(), now, POLICY).outcome == "sent"


def test_a_text_written_for_one_party_never_goes_to_the_other() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    to_guarantor = request(
        now, recipient="guarantor", stage="guarantor_recourse", template="warning-reminder"
    )
    assert decide(to_guarantor, ctx(), now, POLICY) == Block(
        "template_not_for_recipient", RULE_PARTY
    )
    to_debtor = request(now, template="guarantor-notice")
    assert decide(to_debtor, ctx(), now, POLICY) == Block("template_not_for_recipient", RULE_PARTY)


def test_an_opt_out_blocks_its_channel_only() -> None:
    now = local(SHANGHAI, 2026, 11, 23, 12, 0)
    prefs = Preferences(opted_out=frozenset({"sms"}))
    assert decide(request(now, channel="sms"), ctx(preferences=prefs), now, POLICY) == Block(
        "opted_out_sms", RULE_OPT_OUT
    )
    assert (
        decide(request(now, channel="email"), ctx(preferences=prefs), now, POLICY).outcome == "sent"
    )


def test_do_not_contact_blocks_every_channel_and_outranks_the_window() -> None:
    night = local(SHANGHAI, 2026, 11, 23, 23, 0)
    prefs = Preferences(do_not_contact=True)
    for channel in ("sms", "voice", "email", "letter"):
        assert decide(
            request(night, channel=channel), ctx(preferences=prefs), night, POLICY
        ) == Block("do_not_contact", RULE_DO_NOT_CONTACT)


def test_a_letter_is_not_held_to_the_contact_window() -> None:
    night = local(SHANGHAI, 2026, 11, 23, 23, 0)
    assert (
        decide(
            request(night, channel="letter", template="formal-notice"), ctx(), night, POLICY
        ).outcome
        == "sent"
    )


# --- policy as data -------------------------------------------------------------------------------


def test_a_new_jurisdiction_is_configuration() -> None:
    singapore = jurisdiction_from_mapping(
        "SG",
        {
            "window": {"start": "09:00", "end": "20:00"},
            "source": "example",
            "caps": [
                {
                    "name": "calls_per_week",
                    "counts": "attempts",
                    "scope": "debt",
                    "period": "rolling",
                    "days": 7,
                    "limit": 2,
                    "channels": ["voice"],
                }
            ],
        },
    )
    policy = POLICY.with_jurisdictions([singapore])
    now = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Singapore
    sg = request(now, jurisdiction="SG", borrower_time_zone="Asia/Singapore")
    two = tuple(attempt(now - timedelta(days=d), result="unanswered") for d in (1, 2))
    assert decide(sg, ctx(), now, policy) == Send("SG.contact_window")
    assert decide(sg, ctx(attempts=two), now, policy) == Defer(
        now - timedelta(days=2) + timedelta(days=7), "SG.calls_per_week", "frequency_cap"
    )
    assert set(policy.jurisdictions) == {"CN", "US", "UK", "SG"}


def test_the_built_in_rules_are_the_same_data_a_file_would_hold() -> None:
    parsed = {p.jurisdiction: p for p in jurisdictions_from_mapping(BUILT_IN)}
    assert parsed == dict(POLICY.jurisdictions)
    us_rules = parsed["US"]
    assert [c.name for c in us_rules.caps] == ["reg_f_7_in_7"]
    assert us_rules.caps[0].limit == 7
    assert us_rules.caps[0].days == 7
    assert us_rules.quiet_periods[0].days == 7
    assert {c.name: c.limit for c in parsed["CN"].caps} == {
        "connected_calls_per_day": 3,
        "unanswered_calls_per_number_per_day": 6,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "caps": [
                    {
                        "name": "x",
                        "counts": "attempts",
                        "scope": "debt",
                        "period": "rolling",
                        "limit": 1,
                        "channels": ["fax"],
                    }
                ]
            },
            "unknown channels",
        ),
        (
            {
                "caps": [
                    {
                        "name": "x",
                        "counts": "connected",
                        "scope": "debt",
                        "period": "rolling",
                        "limit": 1,
                        "channels": ["sms"],
                    }
                ]
            },
            "only calls",
        ),
        (
            {
                "caps": [
                    {
                        "name": "x",
                        "counts": "attempts",
                        "scope": "street",
                        "period": "rolling",
                        "limit": 1,
                        "channels": ["sms"],
                    }
                ]
            },
            "is not one of",
        ),
        ({"window": {"start": "22:00", "end": "08:00"}}, "start before it ends"),
        ({"widow": {}}, "unknown keys"),
    ],
)
def test_a_policy_file_with_a_mistake_is_refused(change: dict[str, Any], message: str) -> None:
    body = {"window": {"start": "08:00", "end": "21:00"}, **change}
    with pytest.raises(ValueError, match=message):
        jurisdiction_from_mapping("XX", body)


def test_a_daily_cap_reached_before_a_dst_change_frees_at_0800_local_after_it() -> None:
    # UK clocks go back at 02:00 BST on Sunday 2026-10-25: that night is 25 hours long.
    london = ZoneInfo("Europe/London")
    now = local(london, 2026, 10, 24, 18, 0)
    three = tuple(
        attempt(local(london, 2026, 10, 24, h, 0), "sms", "delivered") for h in (9, 12, 15)
    )
    uk = request(
        now, jurisdiction="UK", borrower_time_zone="Europe/London", currency="GBP", channel="sms"
    )
    decision = decide(uk, ctx(attempts=three), now, POLICY)
    assert decision == Defer(
        datetime(2026, 10, 25, 8, 0, tzinfo=UTC),  # 08:00 GMT
        "UK.phone_attempts_per_day",
        "frequency_cap",
    )
    assert decision.until.astimezone(london).hour == 8
    assert decision.until - now == timedelta(hours=15)  # 14 on a normal night
