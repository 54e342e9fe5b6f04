"""Contact permits decided by the one engine: every refusal reason, the results a person
reports, and a property over mixed automated and human attempts (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.domain.decide import RULE_RECHECK, Send, decide
from notifier.domain.model import (
    ActorKind,
    Attempt,
    AttemptResult,
    Cancellation,
    ChannelName,
    Closure,
    ContactDetails,
    ContactRequest,
    DispatchContext,
    Hold,
    Party,
    Preferences,
    Repayment,
    number_key,
)
from notifier.domain.permits import (
    ATTEMPT_RESULT,
    CONFIRMATION_NEEDED,
    CONFIRMATION_ON_ITS_WAY,
    RULE_CASE,
    ConfirmationView,
    ConfirmationWait,
    Granted,
    LedgerConfirmation,
    Permit,
    PermitAsk,
    PermitResult,
    Refused,
    check_result,
    decide_permit,
)
from notifier.domain.policy import CN, US, DispatchPolicy

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
POLICY = DispatchPolicy()
PHONE = "+8613812341234"
NUMBER = number_key(PHONE)
DETAILS = ContactDetails(
    borrower_id="B1",
    language="zh-CN",
    debtor=Party(email="a@example.com", phone=PHONE, postal_address="1 Road"),
    guarantor=Party(name="Li", phone="+8613912345678"),
)
# 10:00 in Shanghai.
TEN_SH = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)


def anchor(at: datetime, **changes: Any) -> ContactRequest:
    """The loan's latest contact command, as the workflow issued it."""
    base = ContactRequest(
        command_id="cmd-1",
        intent_id="int-1",
        case_id="case-1",
        loan_id="L1",
        borrower_id="B1",
        recipient="debtor",
        channel="sms",
        stage="formal_notice",
        template="formal-notice",
        currency="CNY",
        amount_due=Decimal("990.00"),
        confirmation_id="conf-1",
        ledger_watermark=7,
        confirmed_at=at - timedelta(minutes=5),
        confirmation_valid_until=at + timedelta(minutes=25),
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        issued_at=at - timedelta(minutes=5),
    )
    return replace(base, **changes)


def ask(
    channel: ChannelName = "voice", *, kind: ActorKind = "collector", actor: str = "col-1"
) -> PermitAsk:
    return PermitAsk("L1", "debtor", channel, kind, actor)


def ctx(**changes: Any) -> DispatchContext:
    return replace(DispatchContext(details=DETAILS, validation="sent"), **changes)


def permit(
    the_ask: PermitAsk,
    context: DispatchContext,
    now: datetime,
    base: ContactRequest | None = None,
) -> Granted | Refused:
    return decide_permit(
        the_ask,
        anchor(now) if base is None else base,
        context,
        permit_id="permit-x",
        now=now,
        policy=POLICY,
    )


_n = 0


def call(at: datetime, result: AttemptResult, *, channel: ChannelName = "voice") -> Attempt:
    global _n
    _n += 1
    return Attempt(f"permit-{_n}", "L1", "B1:debtor", channel, at, result, NUMBER)


# --- granted, and refused for each reason ----------------------------------------------------


def test_a_permit_inside_the_window_with_nothing_against_it_is_granted() -> None:
    assert permit(ask(), ctx(), TEN_SH) == Granted("CN.contact_window")


def test_outside_hours_in_the_persons_local_time_is_refused_until_the_next_window() -> None:
    late = datetime(2026, 11, 23, 22, 30, tzinfo=SHANGHAI)
    refused = permit(ask(), ctx(), late)
    assert refused == Refused(
        "outside_hours",
        "CN.contact_window",
        "outside_contact_window",
        datetime(2026, 11, 24, 8, 0, tzinfo=SHANGHAI),
    )


def test_three_connected_calls_by_a_collector_and_two_agencies_refuse_the_fourth() -> None:
    # Actors do not matter to the cap: it counts calls to the debtor, whoever made them.
    attempts = tuple(call(TEN_SH - timedelta(minutes=m), "connected") for m in (90, 60, 30))
    refused = permit(ask(kind="agency", actor="agency-2"), ctx(attempts=attempts), TEN_SH)
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule, refused.detail) == (
        "cap_reached",
        "CN.connected_calls_per_day",
        "frequency_cap",
    )
    assert refused.retry_after == datetime(2026, 11, 24, 8, 0, tzinfo=SHANGHAI)
    # Two connected and one unanswered: the fourth call may go.
    two = (*attempts[:2], call(TEN_SH - timedelta(minutes=30), "unanswered"))
    assert isinstance(permit(ask(), ctx(attempts=two), TEN_SH), Granted)


def test_a_granted_permit_without_a_result_counts_as_the_worst_case() -> None:
    two = tuple(call(TEN_SH - timedelta(minutes=m), "answered") for m in (90, 60))
    pending = replace(
        call(TEN_SH - timedelta(minutes=1), "pending"), settles_by=TEN_SH + timedelta(hours=1)
    )
    refused = permit(ask(), ctx(attempts=(*two, pending)), TEN_SH)
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.detail) == ("cap_reached", "attempt_in_flight")


def test_a_repayment_the_confirmation_did_not_see_refuses_with_reason_repaid() -> None:
    repaid = Repayment("r1", TEN_SH - timedelta(minutes=1), reversed=False)
    refused = permit(ask(), ctx(repayments=(repaid,)), TEN_SH)
    assert refused == Refused("repaid", RULE_RECHECK, "repaid_after_confirmation")
    # Reversed: the money did not stay, the balance stands.
    reversed_ = replace(repaid, reversed=True)
    assert isinstance(permit(ask(), ctx(repayments=(reversed_,)), TEN_SH), Granted)


@pytest.mark.parametrize(
    ("context", "reason", "rule"),
    [
        (
            ctx(closures=(Closure("repaid", TEN_SH - timedelta(minutes=1)),)),
            "case_closed",
            "case_closed",
        ),
        (ctx(holds=(Hold("h1", "dispute", TEN_SH - timedelta(minutes=1)),)), "hold", "case_hold"),
        (
            ctx(cancellations=(Cancellation("repaid", TEN_SH - timedelta(minutes=1)),)),
            "repaid",
            "workflow_cancellation",
        ),
        (ctx(preferences=Preferences(do_not_contact=True)), "do_not_contact", "do_not_contact"),
        (
            ctx(preferences=Preferences(opted_out=frozenset({"voice"}))),
            "opted_out",
            "channel_opt_out",
        ),
        (ctx(details=None), "no_contact_details", "contact_details"),
    ],
)
def test_each_stop_of_the_engine_is_a_refusal_with_its_reason_and_rule(
    context: DispatchContext, reason: str, rule: str
) -> None:
    refused = permit(ask(), context, TEN_SH)
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule) == (reason, rule)


def test_a_stale_ledger_confirmation_refuses_balance_unconfirmed() -> None:
    stale = anchor(TEN_SH, confirmation_valid_until=TEN_SH)
    refused = permit(ask(), ctx(), TEN_SH, stale)
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule) == ("balance_unconfirmed", "ledger_confirmation_validity")


# --- a fresher ledger confirmation (a leased task's) as the permit's anchor ------------------

# The case's last command was confirmed two hours ago: its confirmation has long expired.
OLD = anchor(
    TEN_SH - timedelta(hours=2),
    confirmation_valid_until=TEN_SH - timedelta(hours=1, minutes=30),
)


def fresh(at: datetime, *, valid: timedelta = timedelta(minutes=30)) -> LedgerConfirmation:
    return LedgerConfirmation("conf-lease", 9, Decimal("990.00"), at, at + valid)


def on(
    view: ConfirmationView, context: DispatchContext, now: datetime = TEN_SH
) -> Granted | Refused:
    return decide_permit(
        ask(), OLD, context, permit_id="permit-x", now=now, policy=POLICY, confirmations=view
    )


def test_a_fresh_confirmation_grants_a_permit_on_a_case_whose_last_command_is_old() -> None:
    refused = on(ConfirmationView(), ctx())
    assert isinstance(refused, Refused)
    assert refused.reason == "balance_unconfirmed"
    assert on(ConfirmationView(fresh(TEN_SH - timedelta(seconds=2))), ctx()) == Granted(
        "CN.contact_window"
    )


def test_a_repayment_after_the_fresh_confirmation_still_refuses_with_reason_repaid() -> None:
    view = ConfirmationView(fresh(TEN_SH - timedelta(minutes=3)))
    repaid = Repayment("r1", TEN_SH - timedelta(minutes=1), reversed=False)
    assert on(view, ctx(repayments=(repaid,))) == Refused(
        "repaid", RULE_RECHECK, "repaid_after_confirmation"
    )
    # One the fresh confirmation saw (well before it, past the lookback) does not void it.
    seen = Repayment("r0", TEN_SH - timedelta(minutes=30), reversed=False)
    assert isinstance(on(view, ctx(repayments=(seen,))), Granted)


def test_a_fresh_confirmation_that_expired_or_is_older_than_the_commands_is_not_used() -> None:
    lapsed = ConfirmationView(fresh(TEN_SH - timedelta(minutes=31)))
    refused = on(lapsed, ctx())
    assert isinstance(refused, Refused)
    assert refused.reason == "balance_unconfirmed"
    # Older than the command's own confirmation: the command's stands (here still valid).
    current = anchor(TEN_SH)
    older = ConfirmationView(fresh(current.confirmed_at - timedelta(minutes=1), valid=timedelta(0)))
    granted = decide_permit(
        ask(), current, ctx(), permit_id="p", now=TEN_SH, policy=POLICY, confirmations=older
    )
    assert isinstance(granted, Granted)


def test_a_cancellation_of_the_command_still_covers_a_fresher_confirmation() -> None:
    """Only the confirmation is replaced: the workflow's cancellation of everything issued
    so far still stops a person (the case's next command lifts it)."""
    cancelled = ctx(cancellations=(Cancellation("held", TEN_SH - timedelta(minutes=10)),))
    refused = on(ConfirmationView(fresh(TEN_SH - timedelta(seconds=2))), cancelled)
    assert isinstance(refused, Refused)
    assert refused.reason == "hold"


def test_balance_unconfirmed_says_when_to_retry_if_a_confirmation_is_on_its_way() -> None:
    wait = ConfirmationWait(expect=timedelta(seconds=3), give_up=timedelta(seconds=60))

    def refusal(view: ConfirmationView) -> Refused:
        decision = decide_permit(
            ask(),
            OLD,
            ctx(),
            permit_id="p",
            now=TEN_SH,
            policy=POLICY,
            confirmations=view,
            wait=wait,
        )
        assert isinstance(decision, Refused)
        assert decision.reason == "balance_unconfirmed"
        return decision

    asked = refusal(ConfirmationView(pending_since=TEN_SH - timedelta(seconds=1)))
    assert (asked.detail, asked.retry_after) == (
        CONFIRMATION_ON_ITS_WAY,
        TEN_SH + timedelta(seconds=3),
    )
    # Nothing asked for, or asked for so long ago it is presumed lost: one must be asked for.
    for view in (
        ConfirmationView(),
        ConfirmationView(pending_since=TEN_SH - timedelta(seconds=61)),
    ):
        needed = refusal(view)
        assert (needed.detail, needed.retry_after) == (CONFIRMATION_NEEDED, None)


@settings(max_examples=200, deadline=None)
@given(
    command_age=st.integers(min_value=0, max_value=120),
    fresh_age=st.one_of(st.none(), st.integers(min_value=0, max_value=120)),
    repaid_age=st.one_of(st.none(), st.integers(min_value=0, max_value=120)),
)
def test_a_permit_rests_on_an_unexpired_confirmation_no_later_repayment_voids(
    command_age: int, fresh_age: int | None, repaid_age: int | None
) -> None:
    """Granted only if the confirmation it rests on (the command's or a fresher one,
    minutes old) is valid for 30 minutes and no repayment came after it (less the
    lookback): the invariant every contact command is held to."""
    valid = timedelta(minutes=30)
    at = TEN_SH - timedelta(minutes=command_age)
    base = anchor(TEN_SH, confirmed_at=at, confirmation_valid_until=at + valid)
    latest = fresh(TEN_SH - timedelta(minutes=fresh_age)) if fresh_age is not None else None
    repayments = (
        (Repayment("r", TEN_SH - timedelta(minutes=repaid_age), reversed=False),)
        if repaid_age is not None
        else ()
    )
    decision = decide_permit(
        ask(),
        base,
        ctx(repayments=repayments),
        permit_id="p",
        now=TEN_SH,
        policy=POLICY,
        confirmations=ConfirmationView(latest),
    )
    confirmed_at = max(at, latest.confirmed_at) if latest else at
    if isinstance(decision, Granted):
        assert confirmed_at + valid > TEN_SH
        assert not any(
            r.received_at is not None and r.received_at > confirmed_at - POLICY.recheck_lookback
            for r in repayments
        )
    elif confirmed_at + valid > TEN_SH and not repayments:
        raise AssertionError(f"refused with a valid confirmation and no repayment: {decision}")


def test_no_contact_command_for_the_loan_is_an_unknown_case() -> None:
    refused = decide_permit(ask(), None, ctx(), permit_id="permit-x", now=TEN_SH, policy=POLICY)
    assert refused == Refused("case_unknown", RULE_CASE, "no_contact_command_for_loan")


def test_the_guarantor_only_at_the_guarantor_stage_and_no_template_is_needed() -> None:
    guarantor = PermitAsk("L1", "guarantor", "voice", "collector", "col-1")
    refused = permit(guarantor, ctx(), TEN_SH)
    assert isinstance(refused, Refused)
    assert refused.reason == "not_a_party"
    at_stage = anchor(TEN_SH, stage="guarantor_recourse")
    # The anchor's text is the debtor's: a person speaks, so no template stands in the way.
    assert isinstance(permit(guarantor, ctx(), TEN_SH, at_stage), Granted)


# --- Reg F: validation notice, 7 in 7, the quiet week -----------------------------------------

NOON_NY = datetime(2026, 11, 23, 12, 0, tzinfo=NEW_YORK)


def us_anchor() -> ContactRequest:
    return anchor(NOON_NY, jurisdiction="US", borrower_time_zone="America/New_York")


def test_reg_f_a_person_waits_for_the_validation_notice() -> None:
    refused = permit(ask(), ctx(validation="none"), NOON_NY, us_anchor())
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule) == (
        "validation_notice_first",
        "US.reg_f_validation_notice",
    )
    # Even by e-mail: a person cannot carry the notice.
    refused = permit(ask("email"), ctx(validation="none"), NOON_NY, us_anchor())
    assert isinstance(refused, Refused)
    assert refused.reason == "validation_notice_first"


def test_reg_f_a_conversation_starts_the_quiet_week_a_connected_call_does_not() -> None:
    day = timedelta(days=1)
    conversation = call(NOON_NY - day, ATTEMPT_RESULT["conversation"])
    refused = permit(ask(), ctx(attempts=(conversation,)), NOON_NY, us_anchor())
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule) == ("quiet_period", "US.reg_f_quiet_after_conversation")
    connected = call(NOON_NY - day, ATTEMPT_RESULT["connected"])
    assert isinstance(permit(ask(), ctx(attempts=(connected,)), NOON_NY, us_anchor()), Granted)


def test_reg_f_seven_attempts_in_seven_days_count_texts_and_people_together() -> None:
    seven = tuple(
        call(NOON_NY - timedelta(hours=20 * d), "unanswered", channel="voice" if d % 2 else "sms")
        for d in range(1, 8)
    )
    refused = permit(ask(), ctx(attempts=seven), NOON_NY, us_anchor())
    assert isinstance(refused, Refused)
    assert (refused.reason, refused.rule) == ("cap_reached", "US.reg_f_7_in_7")


# --- results ----------------------------------------------------------------------------------


def stored(**changes: Any) -> Permit:
    base = Permit(
        permit_id="permit-1",
        loan_id="L1",
        recipient="debtor",
        channel="voice",
        actor_kind="collector",
        actor_id="col-1",
        decision="granted",
        reason="all_checks_passed",
        rule="CN.contact_window",
        asked_at=TEN_SH,
        expires_at=TEN_SH + timedelta(minutes=5),
        result_by=TEN_SH + timedelta(hours=1),
    )
    return replace(base, **changes)


def test_a_result_is_recorded_once_by_its_holder_within_its_window() -> None:
    later = TEN_SH + timedelta(minutes=20)
    assert check_result(stored(), "col-1", "connected", later) == "record"
    assert check_result(stored(), "col-2", "connected", later) == "not_yours"
    done = stored(result="connected", result_at=later)
    assert check_result(done, "col-1", "connected", later) == "replay"
    assert check_result(done, "col-1", "conversation", later) == "conflict"
    assert check_result(stored(decision="refused"), "col-1", "connected", later) == "not_granted"
    assert check_result(stored(), "col-1", "connected", TEN_SH + timedelta(hours=2)) == "expired"


# --- the property: automated and human attempts never exceed a cap --------------------------

# A step: minutes since the last one, who acts, and what became of the contact.
Step = tuple[int, str, str]
steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=8 * 60),
        st.sampled_from(["auto_voice", "auto_sms", "collector", "agency"]),
        st.sampled_from(["connected", "unanswered", "conversation"]),
    ),
    min_size=1,
    max_size=40,
)


def _would_exceed(jurisdiction: str, attempts: list[Attempt], now: datetime) -> list[str]:
    """The caps a new call at ``now`` would break, counted here independently of caps.py,
    with every attempt on its worst case."""
    broken: list[str] = []
    if jurisdiction == "CN":
        day = now.astimezone(SHANGHAI).date()
        today = [a for a in attempts if a.at.astimezone(SHANGHAI).date() == day]
        connected = [
            a for a in today if a.channel == "voice" and a.result not in ("unanswered", "failed")
        ]
        unanswered = [
            a for a in today if a.channel == "voice" and a.result not in ("answered", "connected")
        ]
        if len(connected) + 1 > 3:
            broken.append("connected_calls_per_day")
        if len(unanswered) + 1 > 6:
            broken.append("unanswered_calls_per_number_per_day")
        if not 8 <= now.astimezone(SHANGHAI).hour < 22:
            broken.append("window")
    else:
        week = [a for a in attempts if now - timedelta(days=7) < a.at]
        if len([a for a in week if a.result != "failed"]) + 1 > 7:
            broken.append("reg_f_7_in_7")
        if any(a.channel == "voice" and a.result in ("answered", "pending") for a in week):
            broken.append("quiet_after_conversation")
        if not 8 <= now.astimezone(NEW_YORK).hour < 21:
            broken.append("window")
    return broken


@settings(max_examples=150, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
    jurisdiction=st.sampled_from(["CN", "US"]),
    plan=steps,
)
def test_no_permit_is_granted_past_a_cap_or_outside_the_window(
    start: datetime, jurisdiction: str, plan: list[Step]
) -> None:
    zone = "Asia/Shanghai" if jurisdiction == "CN" else "America/New_York"
    attempts: list[Attempt] = []
    now = start
    for n, (minutes, who, outcome) in enumerate(plan):
        now += timedelta(minutes=minutes)
        base = anchor(now, jurisdiction=jurisdiction, borrower_time_zone=zone)
        context = ctx(attempts=tuple(attempts))
        if who.startswith("auto"):
            channel: ChannelName = "voice" if who == "auto_voice" else "sms"
            command = replace(
                base, command_id=f"cmd-{n}", channel=channel, template="warning-reminder"
            )
            if isinstance(decide(command, context, now, POLICY), Send):
                result: AttemptResult = (
                    "delivered"
                    if channel == "sms"
                    else ("answered" if outcome == "conversation" else "unanswered")
                )
                attempts.append(
                    Attempt(f"cmd-{n}", "L1", "B1:debtor", channel, now, result, NUMBER)
                )
            continue
        kind: ActorKind = "agency" if who == "agency" else "collector"
        decision = decide_permit(
            PermitAsk("L1", "debtor", "voice", kind, f"{who}-{n % 2}"),
            base,
            context,
            permit_id=f"permit-{n}",
            now=now,
            policy=POLICY,
        )
        if isinstance(decision, Granted):
            assert _would_exceed(jurisdiction, attempts, now) == [], (now, attempts)
            reported = cast(PermitResult, outcome)
            attempts.append(
                Attempt(
                    f"permit-{n}", "L1", "B1:debtor", "voice", now, ATTEMPT_RESULT[reported], NUMBER
                )
            )
    # The jurisdictions under test have caps at all (else the property says nothing).
    assert CN.caps
    assert US.caps
