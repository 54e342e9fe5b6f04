"""The notifier's decision function, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.domain.decide import (
    RULE_CANCELLATION,
    RULE_CONFIRMATION,
    RULE_CONTACT_DETAILS,
    RULE_GUARANTOR,
    RULE_RECHECK,
    Block,
    Cancel,
    Defer,
    Send,
    decide,
)
from notifier.domain.model import (
    Cancellation,
    ContactDetails,
    ContactRequest,
    DispatchContext,
    Party,
    Repayment,
)
from notifier.domain.policy import DispatchPolicy
from notifier.domain.window import within

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
POLICY = DispatchPolicy()
DETAILS = ContactDetails(
    borrower_id="B1",
    language="zh-CN",
    debtor=Party(email="zhang@example.com", phone="+8613812341234", postal_address="Beijing"),
    guarantor=Party(name="Li", phone="+8613912345678"),
)


def local(
    zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=zone)


def request(at: datetime, **changes: object) -> ContactRequest:
    """A command issued and confirmed at ``at``, valid for an hour."""
    base = ContactRequest(
        command_id="cmd-1",
        intent_id="int-1",
        case_id="case-1",
        loan_id="L1",
        borrower_id="B1",
        recipient="debtor",
        channel="sms",
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
    return replace(base, **changes)  # type: ignore[arg-type]


def context(**changes: object) -> DispatchContext:
    # The Reg F validation notice went out already; its gating has tests of its own.
    base = DispatchContext(details=DETAILS, validation="sent")
    return replace(base, **changes)  # type: ignore[arg-type]


# --- contact windows ------------------------------------------------------------------------


def test_cn_2159_local_is_inside_the_window() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 21, 59)
    assert decide(request(now), context(), now, POLICY) == Send("CN.contact_window")


def test_cn_2200_local_defers_to_0800_next_morning() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 22, 0)
    decision = decide(request(now), context(), now, POLICY)
    assert decision == Defer(local(SHANGHAI, 2026, 11, 23, 8, 0), "CN.contact_window")


def test_cn_before_0800_defers_to_0800_the_same_day() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 7, 59, 59)
    decision = decide(request(now), context(), now, POLICY)
    assert isinstance(decision, Defer)
    assert decision.until == local(SHANGHAI, 2026, 11, 22, 8, 0)


def us_request(now: datetime, **changes: object) -> ContactRequest:
    return request(
        now, jurisdiction="US", borrower_time_zone="America/New_York", currency="USD", **changes
    )


def test_us_2059_sends_and_2100_defers_in_new_york() -> None:
    before = local(NEW_YORK, 2026, 7, 1, 20, 59)
    at = local(NEW_YORK, 2026, 7, 1, 21, 0)
    assert decide(us_request(before), context(), before, POLICY) == Send("US.contact_window")
    decision = decide(us_request(at), context(), at, POLICY)
    assert decision == Defer(local(NEW_YORK, 2026, 7, 2, 8, 0), "US.contact_window")


def test_deferral_across_the_march_dst_switch_lands_on_0800_edt() -> None:
    # DST starts in New York on Sunday 2026-03-08 at 02:00. Adding the 10 hours that
    # separate 22:00 from 08:00 on a normal night would land on 09:00 EDT.
    now = local(NEW_YORK, 2026, 3, 7, 22, 0)
    decision = decide(us_request(now), context(), now, POLICY)
    assert isinstance(decision, Defer)
    assert decision.until == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # 08:00 EDT (UTC-4)
    assert decision.until.astimezone(NEW_YORK).hour == 8
    assert decision.until - now == timedelta(hours=9)


def test_deferral_across_the_november_dst_switch_lands_on_0800_est() -> None:
    # DST ends in New York on Sunday 2026-11-01 at 02:00: that night is 11 hours long.
    now = local(NEW_YORK, 2026, 10, 31, 21, 30)
    decision = decide(us_request(now), context(), now, POLICY)
    assert isinstance(decision, Defer)
    assert decision.until == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST (UTC-5)
    assert decision.until.astimezone(NEW_YORK).hour == 8
    assert decision.until - now == timedelta(hours=11, minutes=30)


def test_the_borrowers_zone_counts_not_the_servers() -> None:
    # 15:00 in Shanghai (a fine hour there) is 02:00 in New York, where the borrower lives.
    now = local(SHANGHAI, 2026, 7, 1, 15, 0)
    decision = decide(us_request(now), context(), now, POLICY)
    assert isinstance(decision, Defer)
    assert decision.until == local(NEW_YORK, 2026, 7, 1, 8, 0)
    # And the other way round: 09:00 in New York is 21:00 in Shanghai, still allowed for CN.
    now = local(NEW_YORK, 2026, 7, 1, 9, 0)
    assert decide(request(now), context(), now, POLICY) == Send("CN.contact_window")
    # ...but 10:00 in New York is 22:00 in Shanghai.
    now = local(NEW_YORK, 2026, 7, 1, 10, 0)
    assert isinstance(decide(request(now), context(), now, POLICY), Defer)


def test_an_unknown_time_zone_blocks_rather_than_guesses() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    decision = decide(request(now, borrower_time_zone="Mars/Olympus_Mons"), context(), now, POLICY)
    assert decision == Block("unknown_time_zone", "CN.contact_window")


def test_a_jurisdiction_without_a_policy_blocks() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    policy = DispatchPolicy(jurisdictions={})
    assert decide(request(now), context(), now, policy).outcome == "blocked"


# --- the ledger confirmation and the re-check -----------------------------------------------


def test_an_expired_confirmation_cancels() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    expired = request(now - timedelta(hours=2))
    assert decide(expired, context(), now, POLICY) == Cancel(
        "confirmation_expired", RULE_CONFIRMATION
    )
    # Valid-until is exclusive: at that very instant the confirmation no longer holds.
    edge = request(now - timedelta(hours=1))
    assert decide(edge, context(), now, POLICY).outcome == "cancelled"


def test_a_repayment_after_the_confirmation_cancels() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    paid = Repayment("R1", received_at=now - timedelta(minutes=1), reversed=False)
    decision = decide(request(now - timedelta(minutes=5)), context(repayments=(paid,)), now, POLICY)
    assert decision == Cancel("repaid_after_confirmation", RULE_RECHECK)


def test_a_repayment_just_before_the_confirmation_still_cancels_within_the_lookback() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    confirmed = now - timedelta(minutes=5)
    inside = Repayment("R1", received_at=confirmed - timedelta(minutes=9), reversed=False)
    outside = Repayment("R2", received_at=confirmed - timedelta(minutes=11), reversed=False)
    assert (
        decide(request(confirmed), context(repayments=(inside,)), now, POLICY).outcome
        == "cancelled"
    )
    assert decide(request(confirmed), context(repayments=(outside,)), now, POLICY).outcome == "sent"


def test_a_reversed_repayment_does_not_cancel() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    bounced = Repayment("R1", received_at=now - timedelta(minutes=1), reversed=True)
    decision = decide(
        request(now - timedelta(minutes=5)), context(repayments=(bounced,)), now, POLICY
    )
    assert decision == Send("CN.contact_window")


# --- parties and details --------------------------------------------------------------------


def test_the_guarantor_is_not_contacted_before_the_guarantor_stage() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    early = request(now, recipient="guarantor", stage="formal_notice", template="guarantor-notice")
    assert decide(early, context(), now, POLICY) == Block(
        "guarantor_not_party_at_stage", RULE_GUARANTOR
    )
    due = replace(early, stage="guarantor_recourse")
    assert decide(due, context(), now, POLICY) == Send("CN.contact_window")


def test_no_contact_details_blocks() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    assert decide(request(now), context(details=None), now, POLICY) == Block(
        "no_contact_details", RULE_CONTACT_DETAILS
    )
    # Details exist, but not for this channel (no e-mail address for the guarantor).
    guarantor_mail = request(
        now,
        recipient="guarantor",
        stage="guarantor_recourse",
        channel="email",
        template="guarantor-notice",
    )
    assert decide(guarantor_mail, context(), now, POLICY).outcome == "blocked"


def test_a_template_missing_in_the_borrowers_language_blocks() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    decision = decide(request(now, template="no-such-template"), context(), now, POLICY)
    assert decision.outcome == "blocked"
    assert decision.reason == "no_template_for_language"


# --- workflow cancellations -----------------------------------------------------------------


def test_a_cancellation_watermark_stops_commands_issued_before_it_that_arrive_late() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    mark = Cancellation("repaid", cancelled_at=now - timedelta(minutes=2))
    older = request(now - timedelta(minutes=3))
    assert decide(older, context(cancellations=(mark,)), now, POLICY) == Cancel(
        "repaid", RULE_CANCELLATION
    )
    # Issued in the very instant of the cancellation: when in doubt, nobody is contacted.
    same = request(now - timedelta(minutes=2))
    assert decide(same, context(cancellations=(mark,)), now, POLICY).outcome == "cancelled"
    # A command issued after the cancellation (the case was reopened) is not affected.
    newer = request(now - timedelta(minutes=1))
    assert decide(newer, context(cancellations=(mark,)), now, POLICY).outcome == "sent"


def test_a_cancellation_naming_a_command_stops_only_that_command() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 10, 0)
    named = Cancellation("held", cancelled_at=now, command_id="cmd-2")
    assert decide(request(now), context(cancellations=(named,)), now, POLICY).outcome == "sent"
    assert decide(
        request(now, command_id="cmd-2"), context(cancellations=(named,)), now, POLICY
    ) == Cancel("held", RULE_CANCELLATION)


def test_cancellation_outranks_every_other_check() -> None:
    now = local(SHANGHAI, 2026, 11, 22, 23, 0)  # outside the window, too
    mark = Cancellation("closed", cancelled_at=now)
    expired = request(now - timedelta(hours=3), recipient="guarantor")
    decision = decide(expired, context(cancellations=(mark,), details=None), now, POLICY)
    assert decision == Cancel("closed", RULE_CANCELLATION)


# --- properties -----------------------------------------------------------------------------

ZONES = st.sampled_from(
    [
        "Asia/Shanghai",
        "America/New_York",
        "America/Los_Angeles",
        "Europe/London",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "America/St_Johns",
        "Pacific/Chatham",
        "Pacific/Kiritimati",
        "America/Havana",
        "America/Santiago",
        "Asia/Tehran",
        "UTC",
        "Pacific/Apia",
        "Africa/Casablanca",
    ]
)
INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=500)
@given(instant=INSTANTS, zone=ZONES, jurisdiction=st.sampled_from(["CN", "US", "UK"]))
def test_send_only_inside_the_window_and_deferrals_land_on_a_window_start(
    instant: datetime, zone: str, jurisdiction: str
) -> None:
    req = request(instant, borrower_time_zone=zone, jurisdiction=jurisdiction)
    decision = decide(req, context(), instant, POLICY)
    rules = POLICY.jurisdictions[jurisdiction]
    tz = ZoneInfo(zone)
    if isinstance(decision, Send):
        assert within(instant, tz, rules.window)
    else:
        assert isinstance(decision, Defer)
        assert not within(instant, tz, rules.window)
        assert instant < decision.until <= instant + timedelta(hours=26)
        assert within(decision.until, tz, rules.window)
        # The earliest allowed moment: one second before it is still outside.
        assert not within(decision.until - timedelta(seconds=1), tz, rules.window)
