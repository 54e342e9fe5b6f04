"""The workflow's decisions for each kind of input, without I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.lifecycle import Phase
from workflow.domain.model import Case, CaseStatus, ContactIntent, Exit, IntentStatus, TimerKind
from workflow.domain.policy import DEFAULT_POLICY, Stage

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = DEFAULT_POLICY


def ids(label: str) -> str:
    return f"id-{label}"


def overdue(
    dpd: int = 5, *, as_of: datetime = NOW, event_id: str = "e1", outstanding: str = "1000.00"
) -> m.OverdueReported:
    return m.OverdueReported(
        event_id,
        "L1",
        "B1",
        "consumer-loan",
        "CNY",
        Decimal("100.00"),
        Decimal(outstanding),
        dpd,
        as_of,
        "Asia/Shanghai",
        "CN",
    )


def run(
    case: Case | None, event: d.Input, intents: Sequence[ContactIntent] = (), at: datetime = NOW
) -> d.Decision:
    return d.decide(case, list(intents), event, POLICY, at, ids)


def opened() -> d.Decision:
    return run(None, overdue())


def open_case() -> Case:
    case = opened().case
    assert case is not None
    return case


def confirmation(
    check_id: str, *, valid_for: timedelta = timedelta(minutes=30), amount: str = "1000.00"
) -> m.BalanceConfirmed:
    return m.BalanceConfirmed("e2", check_id, "conf-1", Decimal(amount), 7, NOW, NOW + valid_for)


def test_a_first_overdue_report_opens_a_case_in_warning_and_asks_for_confirmation() -> None:
    decision = opened()
    assert decision.case is not None
    assert decision.case.stage is Stage.WARNING
    assert decision.case.is_open
    assert len(decision.intents) == len(POLICY.for_stage(Stage.WARNING).contacts)
    assert [i.status for i in decision.intents] == [IntentStatus.AWAITING_CONFIRMATION] * len(
        decision.intents
    )
    checks = [e for e in decision.effects if isinstance(e, d.RequestBalanceCheck)]
    assert [c.intent for c in checks] == list(decision.intents)
    assert not any(isinstance(e, d.IssueContactCommand) for e in decision.effects)
    assert {t.kind for t in decision.timers} == {TimerKind.STAGE_TIME_LIMIT}


def test_an_overdue_report_no_newer_than_the_last_applied_changes_nothing() -> None:
    stale = run(open_case(), overdue(40, as_of=NOW))
    assert stale.case is None
    assert not stale.effects
    assert stale.timeline[0].kind == "stale_overdue_ignored"


def test_escalation_moves_one_stage_per_report_even_when_far_past_due() -> None:
    later = run(open_case(), overdue(200, as_of=NOW + timedelta(days=1)))
    assert later.case is not None
    assert later.case.stage is Stage.FORMAL_NOTICE
    assert (
        d.AnnounceStageChanged(Stage.WARNING, Stage.FORMAL_NOTICE, "dpd_threshold") in later.effects
    )
    assert {t.kind for t in later.timers} == {TimerKind.STAGE_TIME_LIMIT, TimerKind.NOTICE_DEADLINE}


def test_confirmation_turns_the_intent_into_a_command() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    result = run(decision.case, confirmation(intent.check_id), decision.intents)
    (command,) = [e for e in result.effects if isinstance(e, d.IssueContactCommand)]
    assert command.intent.status is IntentStatus.COMMANDED
    assert command.intent.confirmation_id == "conf-1"


def test_a_ledger_amount_beyond_tolerance_is_used_and_the_mismatch_recorded() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    result = run(decision.case, confirmation(intent.check_id, amount="700.00"), decision.intents)
    assert result.case is not None
    assert result.case.outstanding == Decimal("700.00")
    assert "balance_mismatch" in [e.kind for e in result.timeline]


def test_an_expired_confirmation_yields_no_command() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    result = run(
        decision.case, confirmation(intent.check_id, valid_for=timedelta(0)), decision.intents
    )
    assert not result.effects
    assert result.timeline[0].kind == "confirmation_expired"


def test_full_repayment_closes_the_case_and_cancels_everything_pending() -> None:
    decision = opened()
    assert decision.case is not None
    paid = run(
        decision.case,
        m.RepaymentReceived("e3", "R1", Decimal("1000"), Decimal("0"), NOW),
        decision.intents,
    )
    assert paid.case is not None
    assert paid.case.exit is Exit.REPAID
    assert [i.status for i in paid.intents] == [IntentStatus.CANCELLED] * len(paid.intents)
    assert d.CancelContacts("repaid") in paid.effects
    late = run(paid.case, confirmation(decision.intents[0].check_id), paid.intents)
    assert not late.effects


def test_ledger_saying_nothing_is_owed_closes_the_case() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    refused = run(
        decision.case, m.BalanceRefused("e4", intent.check_id, "nothing_owed", ""), decision.intents
    )
    assert refused.case is not None
    assert refused.case.status is CaseStatus.CLOSED
    assert not any(isinstance(e, d.IssueContactCommand) for e in refused.effects)


def test_a_stale_projection_schedules_a_recheck_with_backoff() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    refused = run(
        decision.case,
        m.BalanceRefused("e5", intent.check_id, "projection_stale", "api down"),
        decision.intents,
    )
    (waiting,) = refused.intents
    assert waiting.status is IntentStatus.AWAITING_RECHECK
    assert waiting.attempts == 1
    (timer,) = refused.timers
    assert timer.kind is TimerKind.RECHECK
    assert timer.due_at == NOW + POLICY.recheck_base
    fired = run(
        decision.case,
        m.TimerFired("t1", "recheck", timer.token, timer.due_at),
        (waiting,),
        at=timer.due_at,
    )
    (again,) = fired.intents
    assert again.status is IntentStatus.AWAITING_CONFIRMATION
    assert again.check_id != intent.check_id  # a new question for ledger-sync
    assert [type(e) for e in fired.effects] == [d.RequestBalanceCheck]


def test_a_reversal_reopens_a_repaid_case_and_needs_a_new_confirmation() -> None:
    closed = replace(open_case(), status=CaseStatus.CLOSED, exit=Exit.REPAID)
    reopened = run(closed, m.RepaymentReversed("e5", "R1", Decimal("1000"), Decimal("1000"), NOW))
    assert reopened.case is not None
    assert reopened.case.is_open
    assert reopened.case.stage is closed.stage
    # Announced again, as at its opening: ledger-sync reconciles open cases only.
    assert reopened.effects[0] == d.AnnounceCaseOpened()
    assert [e for e in reopened.effects[1:] if not isinstance(e, d.RequestBalanceCheck)] == []
    assert reopened.effects[1:]


def test_a_held_case_resumes_only_with_a_reason_and_reconfirms_first() -> None:
    held = run(
        open_case(), m.RequestHold("k1", "hardship", "hospital", "agent:1"), opened().intents
    )
    assert held.case is not None
    assert held.case.phase is Phase.HELD
    assert d.CancelContacts("held") in held.effects
    resumed = run(held.case, m.RequestResume("k2", "discharged", "agent:1"))
    assert resumed.case is not None
    assert resumed.case.is_open
    kinds = [type(e) for e in resumed.effects]
    assert d.RequestBalanceCheck in kinds
    assert d.IssueContactCommand not in kinds
    assert d.AnnounceResumed in kinds


def test_a_dispute_resumes_only_after_verification() -> None:
    held = run(open_case(), m.RequestHold("k1", "dispute", "borrower disputes", "agent:1"))
    assert held.case is not None
    refused = run(held.case, m.RequestResume("k2", "done", "agent:1"))
    assert refused.rejected is not None
    ok = run(held.case, m.RequestResume("k3", "done", "agent:1", "debt verified"))
    assert ok.case is not None
    assert ok.case.is_open


def test_breathing_space_ends_by_itself_within_sixty_days() -> None:
    held = run(
        open_case(),
        m.RequestHold(
            "k1", "breathing_space", "debt advice", "agent:1", until=NOW + timedelta(days=365)
        ),
    )
    assert held.case is not None
    assert held.case.hold is not None
    assert held.case.hold.until == NOW + timedelta(days=60)
    (timer,) = held.timers
    expired = run(
        held.case, m.TimerFired("t", "hold_expiry", timer.token, timer.due_at), at=timer.due_at
    )
    assert expired.case is not None
    assert expired.case.is_open


def test_the_ten_percent_down_six_month_plan_kept_to_the_end_settles_the_case() -> None:
    case = replace(open_case(), outstanding=Decimal("500000"))
    down = Decimal("50000")
    monthly = Decimal("75000")
    schedule = (
        m.InstalmentTerms(NOW + timedelta(days=1), down),
        *(m.InstalmentTerms(NOW + timedelta(days=30 * (n + 1)), monthly) for n in range(6)),
    )
    plan = run(
        case,
        m.RecordArrangement(
            "k1", "instalment_plan", schedule, "agent:1", interest_reduction=Decimal("20000")
        ),
    )
    assert plan.case is not None
    assert plan.case.phase is Phase.ARRANGED
    assert len(plan.timers) == 7
    state, owed = plan.case, Decimal("500000")
    for n, (timer, terms) in enumerate(zip(plan.timers, schedule, strict=True)):
        owed -= terms.amount
        paid = run(
            state,
            m.RepaymentReceived(
                f"r{n}", f"R{n}", terms.amount, max(owed, Decimal("1.00") + 1), NOW
            ),
        )
        state = paid.case or state
        if n < 6:
            kept = run(
                state,
                m.TimerFired(f"t{n}", "arrangement_due", timer.token, timer.due_at),
                at=timer.due_at,
            )
            assert kept.timeline[0].kind == "instalment_kept"
    assert state.status is CaseStatus.CLOSED
    assert state.exit is Exit.SETTLED
    assert state.last_arrangement is not None
    assert state.last_arrangement.outcome == "completed"
    assert state.last_arrangement.paid == Decimal("500000")


def test_a_missed_instalment_breaks_the_plan_and_escalates() -> None:
    schedule = (
        m.InstalmentTerms(NOW + timedelta(days=1), Decimal("100")),
        m.InstalmentTerms(NOW + timedelta(days=31), Decimal("900")),
    )
    plan = run(open_case(), m.RecordArrangement("k1", "instalment_plan", schedule, "agent:1"))
    assert plan.case is not None
    first = plan.timers[0]
    broken = run(
        plan.case, m.TimerFired("t", "arrangement_due", first.token, first.due_at), at=first.due_at
    )
    assert broken.case is not None
    assert broken.case.stage is Stage.FORMAL_NOTICE
    assert broken.case.arrangement is None
    assert broken.case.last_arrangement is not None
    assert broken.case.last_arrangement.outcome == "broken"
    assert broken.case.last_arrangement.ended_at == first.due_at


def test_refusing_to_communicate_goes_to_litigation() -> None:
    case = replace(open_case(), unanswered_contacts=POLICY.unanswered_limit - 1)
    result = run(case, m.ContactOutcomeReported("e", "c1", "i1", "voice", "unanswered", ""))
    assert result.case is not None
    assert result.case.stage is Stage.LITIGATION


def test_fraud_goes_straight_to_litigation_and_judgment_leads_to_enforcement() -> None:
    fraud = run(open_case(), m.RequestEscalation("k1", "fraud", "forged documents", "agent:1"))
    assert fraud.case is not None
    assert fraud.case.stage is Stage.LITIGATION
    early = run(fraud.case, m.RecordLegalMilestone("k2", "enforcement_applied", "X", "legal"))
    assert early.rejected is not None
    judged = run(fraud.case, m.RecordLegalMilestone("k3", "judgment", "(2026) 1", "legal"))
    assert judged.case is not None
    enforced = run(judged.case, m.RecordLegalMilestone("k4", "enforcement_applied", "E1", "legal"))
    assert enforced.case is not None
    assert enforced.case.stage is Stage.ENFORCEMENT


def test_a_stale_stage_timer_does_nothing() -> None:
    case = open_case()
    moved = run(case, overdue(35, as_of=NOW + timedelta(days=1))).case
    assert moved is not None
    fired = run(moved, m.TimerFired("t", "stage_time_limit", str(case.stage_epoch), NOW))
    assert fired.case is None
    assert fired.timeline[0].kind == "timer_stale"
    assert not d.timer_is_current(moved, TimerKind.STAGE_TIME_LIMIT, str(case.stage_epoch))


def seen(
    outstanding_after: str, at: datetime, *, kind: str = "repayment", amount: str = "1000.00"
) -> m.MoneySeen:
    return m.MoneySeen("e-r", kind, "R1", Decimal(amount), Decimal(outstanding_after), at)


def test_a_repayment_seen_before_the_overdue_it_is_newer_than_opens_the_case_repaid() -> None:
    late = replace(overdue(), money_seen=seen("0", NOW + timedelta(minutes=1)))
    decision = run(None, late)
    assert decision.case is not None
    assert decision.case.exit is Exit.REPAID
    assert decision.intents == ()
    assert decision.timers == ()
    assert not any(isinstance(e, d.RequestBalanceCheck) for e in decision.effects)
    assert d.AnnounceCaseOpened() in decision.effects
    assert [e.kind for e in decision.timeline] == ["case_opened", "case_closed"]


def test_a_partial_repayment_seen_first_lowers_what_the_late_overdue_reports() -> None:
    late = replace(
        overdue(), money_seen=seen("400.00", NOW + timedelta(minutes=1), amount="600.00")
    )
    decision = run(None, late)
    assert decision.case is not None
    assert decision.case.is_open
    assert decision.case.outstanding == Decimal("400.00")
    assert {
        e.expected_outstanding for e in decision.effects if isinstance(e, d.RequestBalanceCheck)
    } == {Decimal("400.00")}


def test_money_seen_before_the_overdues_as_of_is_already_in_its_figures() -> None:
    older = replace(overdue(), money_seen=seen("0", NOW - timedelta(minutes=1)))
    decision = run(None, older)
    assert decision.case is not None
    assert decision.case.is_open
    assert decision.case.outstanding == Decimal("1000.00")
    assert decision.intents


def test_a_reversal_seen_after_the_repayment_leaves_the_debt_owed() -> None:
    bounced = replace(
        overdue(), money_seen=seen("1000.00", NOW + timedelta(minutes=2), kind="reversal")
    )
    decision = run(None, bounced)
    assert decision.case is not None
    assert decision.case.is_open
    assert decision.case.outstanding == Decimal("1000.00")


def test_a_confirmation_asked_for_before_a_repayment_does_not_set_the_balance_back() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    later = NOW + timedelta(minutes=1)
    paid = run(
        decision.case,
        m.RepaymentReceived("e3", "R1", Decimal("600"), Decimal("400"), later),
        decision.intents,
        at=later,
    )
    assert paid.case is not None
    assert paid.case.outstanding == Decimal("400")
    answer = run(
        paid.case,
        confirmation(intent.check_id, amount="1000.00"),
        decision.intents,
        at=later + timedelta(seconds=5),
    )
    assert answer.case is not None
    assert answer.case.outstanding == Decimal("400")
    assert "confirmation_older_than_repayment" in [e.kind for e in answer.timeline]
    # A check asked for after the repayment is the ledger's word again.
    again = run(
        paid.case,
        confirmation(intent.check_id, amount="700.00"),
        [replace(intent, created_at=later + timedelta(seconds=1))],
        at=later + timedelta(seconds=5),
    )
    assert again.case is not None
    assert again.case.outstanding == Decimal("700.00")


def test_a_kept_promise_stays_readable_with_what_was_paid() -> None:
    promise = run(
        open_case(),
        m.RecordArrangement(
            "k1",
            "promise_to_pay",
            (m.InstalmentTerms(NOW + timedelta(days=7), Decimal("300")),),
            "agent:1",
        ),
    )
    assert promise.case is not None
    kept = run(promise.case, m.RepaymentReceived("e3", "R1", Decimal("300"), Decimal("700"), NOW))
    assert kept.case is not None
    assert kept.case.arrangement is None
    last = kept.case.last_arrangement
    assert last is not None
    assert last.outcome == "kept"
    assert last.paid == Decimal("300")
    assert last.total == Decimal("300")
    assert last.ended_at == NOW


def test_a_hold_over_a_running_arrangement_cancels_it_readably() -> None:
    promise = run(
        open_case(),
        m.RecordArrangement(
            "k1",
            "promise_to_pay",
            (m.InstalmentTerms(NOW + timedelta(days=7), Decimal("300")),),
            "agent:1",
        ),
    )
    assert promise.case is not None
    held = run(promise.case, m.RequestHold("k2", "hardship", "hospital", "agent:1"))
    assert held.case is not None
    assert held.case.last_arrangement is not None
    assert held.case.last_arrangement.outcome == "cancelled"


def test_a_breathing_space_backdated_to_the_debt_advice_ends_sixty_days_from_it() -> None:
    applied = NOW - timedelta(days=10)
    held = run(
        open_case(),
        m.RequestHold("k1", "breathing_space", "debt advice", "agent:1", effective_from=applied),
    )
    assert held.case is not None
    assert held.case.hold is not None
    assert held.case.hold.effective_from == applied
    assert held.case.hold.started_at == NOW
    assert held.case.hold.until == applied + timedelta(days=60)
    (timer,) = held.timers
    assert timer.due_at == applied + timedelta(days=60)
    assert held.timeline[0].detail["effective_from"] == applied.isoformat()


def test_a_hold_with_an_end_date_resumes_by_itself_and_reconfirms_first() -> None:
    until = NOW + timedelta(days=5)
    held = run(
        open_case(),
        m.RequestHold(
            "k1",
            "hardship",
            "hospital",
            "agent:1",
            until=until,
            effective_from=NOW - timedelta(days=2),
        ),
    )
    assert held.case is not None
    (timer,) = held.timers
    assert timer.due_at == until
    resumed = run(held.case, m.TimerFired("t", "hold_expiry", timer.token, timer.due_at), at=until)
    assert resumed.case is not None
    assert resumed.case.is_open
    assert resumed.case.hold is None
    assert resumed.intents
    expected = d.RequestBalanceCheck | d.AnnounceResumed
    assert [e for e in resumed.effects if not isinstance(e, expected)] == []


def test_a_hold_cannot_start_in_the_future_nor_end_before_now() -> None:
    case = open_case()
    future = run(
        case, m.RequestHold("k1", "hardship", "r", "a", effective_from=NOW + timedelta(hours=1))
    )
    assert future.rejected is not None
    assert "future" in future.rejected
    ended = run(
        case,
        m.RequestHold(
            "k2",
            "hardship",
            "r",
            "a",
            effective_from=NOW - timedelta(days=9),
            until=NOW - timedelta(days=1),
        ),
    )
    assert ended.rejected is not None
    expired = run(
        case,
        m.RequestHold("k3", "breathing_space", "r", "a", effective_from=NOW - timedelta(days=61)),
    )
    assert expired.rejected is not None


def test_a_contact_outcome_keeps_when_the_contact_was_made() -> None:
    sent_at = NOW - timedelta(minutes=3)
    result = run(
        open_case(),
        m.ContactOutcomeReported("e", "c1", "i1", "sms", "sent", "", occurred_at=sent_at),
    )
    assert result.timeline[0].detail["occurred_at"] == sent_at.isoformat()


def test_a_confirmation_asked_for_contact_permits_is_on_the_timeline_and_changes_nothing() -> None:
    case = open_case()
    intents = opened().intents
    check = d.permit_check_id("lease:l-1:0")
    confirmed = run(case, confirmation(check, amount="900.00"), intents)
    assert confirmed.case is None  # not the people's check to change the case's balance
    assert confirmed.intents == ()
    assert confirmed.effects == ()
    (entry,) = confirmed.timeline
    assert entry.kind == "balance_reconfirmed"
    assert entry.detail["check_id"] == check
    assert entry.detail["confirmed_outstanding"] == "900.00"
    refused = run(case, m.BalanceRefused("e3", check, "projection_stale", "lagging"), intents)
    assert refused.case is None
    assert [e.kind for e in refused.timeline] == ["balance_not_reconfirmed"]
    # "Nothing owed" closes the case whichever check found it out.
    gone = run(case, m.BalanceRefused("e4", check, "nothing_owed", ""), intents)
    assert gone.case is not None
    assert gone.case.is_closed


def permit_noted(kind: str, **changes: object) -> m.PermitNoted:
    base = m.PermitNoted(
        "e-permit",
        kind,
        "permit-1",
        "debtor",
        "voice",
        "collector",
        "col-1",
        "all_checks_passed" if kind != "refused" else "cap_reached",
        "CN.contact_window",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_permit_and_its_result_are_on_the_timeline_and_change_nothing_else() -> None:
    case = replace(open_case(), unanswered_contacts=2)
    for kind, extra in (
        ("granted", {}),
        ("refused", {"retry_after": NOW + timedelta(hours=1)}),
        ("result", {"result": "unanswered"}),
    ):
        decision = run(case, permit_noted(kind, **extra), opened().intents)
        assert decision.case is None  # a result is not counted here: the task's result acts
        assert decision.effects == ()
        (entry,) = decision.timeline
        assert entry.kind == f"permit_{kind}"
        assert entry.detail["actor_kind"] == "collector"
        assert entry.detail["actor_id"] == "col-1"
        assert entry.cause == "event:e-permit"


def test_a_refusal_for_want_of_a_confirmation_asks_ledger_sync_for_one_if_the_case_is_open() -> (
    None
):
    case = open_case()
    needed = permit_noted(
        "refused", reason="balance_unconfirmed", rule="x", confirmation_needed=True
    )
    decision = run(case, needed)
    assert decision.case is None
    (check,) = decision.effects
    assert isinstance(check, d.RequestPermitCheck)
    assert check.check_id == d.permit_check_id("permit:permit-1")
    assert check.expected_outstanding == case.outstanding
    assert [e.kind for e in decision.timeline] == ["permit_refused", "balance_check_requested"]
    held = replace(case, status=CaseStatus.HELD)
    assert run(held, needed).effects == ()
