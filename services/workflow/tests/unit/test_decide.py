"""The workflow's decisions, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.model import CaseStatus, Exit, IntentStatus
from workflow.domain.policy import DEFAULT_POLICY, STAGE_ORDER, Stage

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = DEFAULT_POLICY


def ids(label: str) -> str:
    return f"id-{label}"


def overdue(dpd: int = 5, *, as_of: datetime = NOW, event_id: str = "e1",
            outstanding: str = "1000.00") -> m.OverdueReported:
    return m.OverdueReported(event_id, "L1", "B1", "consumer-loan", "CNY", Decimal("100.00"),
                             Decimal(outstanding), dpd, as_of, "Asia/Shanghai", "CN")


def opened() -> d.Decision:
    return d.on_overdue(None, [], overdue(), POLICY, NOW, ids)


def confirmation(check_id: str, *, valid_for: timedelta = timedelta(minutes=30)
                 ) -> m.BalanceConfirmed:
    return m.BalanceConfirmed("e2", check_id, "conf-1", Decimal("990.00"), 7, NOW,
                              NOW + valid_for)


def test_a_first_overdue_report_opens_a_case_in_warning_and_asks_for_confirmation() -> None:
    decision = opened()
    assert decision.case is not None
    assert decision.case.stage is Stage.WARNING and decision.case.is_open
    assert len(decision.intents) == len(POLICY.for_stage(Stage.WARNING).contacts)
    assert all(i.status is IntentStatus.AWAITING_CONFIRMATION for i in decision.intents)
    checks = [e for e in decision.effects if isinstance(e, d.RequestBalanceCheck)]
    assert [c.intent for c in checks] == list(decision.intents)
    # Nothing reaches the notifier before the ledger confirms.
    assert not any(isinstance(e, d.IssueContactCommand) for e in decision.effects)


def test_an_overdue_report_no_newer_than_the_last_applied_changes_nothing() -> None:
    case = opened().case
    assert case is not None
    stale = d.on_overdue(case, [], overdue(40, as_of=NOW), POLICY, NOW, ids)
    assert stale.case is None and not stale.effects
    assert stale.timeline[0].kind == "stale_overdue_ignored"


def test_escalation_moves_one_stage_per_report_even_when_far_past_due() -> None:
    case = opened().case
    assert case is not None
    later = d.on_overdue(case, [], overdue(200, as_of=NOW + timedelta(days=1)), POLICY, NOW,
                         ids)
    assert later.case is not None and later.case.stage is Stage.FORMAL_NOTICE
    assert d.AnnounceStageChanged(Stage.WARNING, Stage.FORMAL_NOTICE, "days_past_due") \
        in later.effects


def test_confirmation_turns_the_intent_into_a_command() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    result = d.on_balance_confirmed(decision.case, intent, confirmation(intent.intent_id),
                                    POLICY, NOW, ids)
    (command,) = [e for e in result.effects if isinstance(e, d.IssueContactCommand)]
    assert command.intent.status is IntentStatus.COMMANDED
    assert command.intent.confirmation_id == "conf-1"


def test_an_expired_confirmation_yields_no_command() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    result = d.on_balance_confirmed(decision.case, intent,
                                    confirmation(intent.intent_id, valid_for=timedelta(0)),
                                    POLICY, NOW, ids)
    assert not result.effects and result.timeline[0].kind == "confirmation_expired"


def test_full_repayment_closes_the_case_and_cancels_everything_pending() -> None:
    decision = opened()
    assert decision.case is not None
    paid = d.on_repayment(decision.case, decision.intents,
                          m.RepaymentReceived("e3", "R1", Decimal("1000"), Decimal("0"), NOW),
                          POLICY, NOW)
    assert paid.case is not None and paid.case.exit is Exit.REPAID
    assert all(i.status is IntentStatus.CANCELLED for i in paid.intents)
    assert d.CancelContacts("repaid") in paid.effects
    # A confirmation arriving afterwards must not produce a command.
    late = d.on_balance_confirmed(paid.case, paid.intents[0],
                                  confirmation(paid.intents[0].intent_id), POLICY, NOW, ids)
    assert not late.effects


def test_ledger_saying_nothing_is_owed_closes_the_case() -> None:
    decision = opened()
    assert decision.case is not None
    intent = decision.intents[0]
    refused = d.on_balance_refused(decision.case, intent, decision.intents,
                                   m.BalanceRefused("e4", intent.intent_id, "nothing_owed", ""),
                                   POLICY, NOW)
    assert refused.case is not None and refused.case.status is CaseStatus.CLOSED
    assert not any(isinstance(e, d.IssueContactCommand) for e in refused.effects)


def test_a_reversal_reopens_a_repaid_case_and_needs_a_new_confirmation() -> None:
    decision = opened()
    assert decision.case is not None
    closed = replace(decision.case, status=CaseStatus.CLOSED, exit=Exit.REPAID)
    reopened = d.on_reversal(closed, m.RepaymentReversed("e5", "R1", Decimal("1000"),
                                                         Decimal("1000"), NOW), POLICY, NOW, ids)
    assert reopened.case is not None and reopened.case.is_open
    assert reopened.case.stage is closed.stage
    assert all(isinstance(e, d.RequestBalanceCheck) for e in reopened.effects)


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(-3, 3)), min_size=1, max_size=30))
def test_stages_only_ever_advance_one_at_a_time(reports: list[tuple[int, int]]) -> None:
    case = opened().case
    assert case is not None
    for dpd, shift in reports:
        as_of = case.last_overdue_as_of + timedelta(hours=shift)
        decision = d.on_overdue(case, [], overdue(dpd, as_of=as_of), POLICY, NOW, ids)
        if decision.case is not None:
            step = STAGE_ORDER.index(decision.case.stage) - STAGE_ORDER.index(case.stage)
            assert step in (0, 1)
            case = decision.case
