"""Every (phase, trigger) pair of the lifecycle table has a defined, tested outcome."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from workflow.domain import decide as d
from workflow.domain.lifecycle import (
    EXITS,
    PRE_LEGAL,
    TRANSITIONS,
    Phase,
    Rule,
    Trigger,
    mermaid,
)
from workflow.domain.model import (
    Arrangement,
    ArrangementKind,
    Case,
    CaseStatus,
    Exit,
    Hold,
    HoldKind,
    Instalment,
    PreDelinquency,
)
from workflow.domain.policy import DEFAULT_POLICY, STAGE_ORDER, Stage

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CTX = d._Ctx(DEFAULT_POLICY, NOW, lambda label: f"id-{label}", "test")
HOLD = Hold("h1", HoldKind.OPERATOR, "checking", "agent:1", NOW)
PRE = PreDelinquency("S1", "income_drop", Decimal("0.9"), NOW, NOW + timedelta(days=30))
ARRANGEMENT = Arrangement(
    "a1",
    ArrangementKind.PROMISE_TO_PAY,
    (Instalment(NOW + timedelta(days=7), Decimal("100")),),
    NOW,
)


def case_in(phase: Phase) -> Case:
    base = Case(
        case_id="C1",
        loan_id="L1",
        borrower_id="B1",
        product="consumer-loan",
        currency="CNY",
        stage=Stage.WARNING,
        status=CaseStatus.OPEN,
        exit=None,
        outstanding=Decimal("1000"),
        amount_overdue=Decimal("100"),
        days_past_due=10,
        last_overdue_as_of=NOW,
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        policy_version="v",
        opened_at=NOW,
        updated_at=NOW,
        stage_epoch=3,
        stage_entered_at=NOW,
        outstanding_at_stage_entry=Decimal("1000"),
    )
    if phase.value in {s.value for s in Stage}:
        return replace(base, stage=Stage(phase.value))
    if phase is Phase.ARRANGED:
        return replace(base, arrangement=ARRANGEMENT)
    if phase is Phase.PRE_DELINQUENCY:
        return replace(base, days_past_due=0, amount_overdue=Decimal(0), pre_delinquency=PRE)
    if phase is Phase.HELD:
        return replace(base, status=CaseStatus.HELD, hold=HOLD)
    return replace(base, status=CaseStatus.CLOSED, exit=Exit(phase.value))


def test_the_table_covers_every_pair() -> None:
    assert len(TRANSITIONS) == len(Phase) * len(Trigger)


@pytest.mark.parametrize(("phase", "trigger"), list(TRANSITIONS))
def test_every_pair_does_what_the_table_says(phase: Phase, trigger: Trigger) -> None:
    case = case_in(phase)
    if trigger is Trigger.FELL_OVERDUE and phase in (Phase.HELD, *EXITS):
        # Routed here only for a case opened by a risk signal (held, or ended so).
        case = replace(case, pre_delinquency=PRE)
    assert case.phase is phase
    expected = TRANSITIONS[(phase, trigger)]
    decision = d.apply_rule(
        case,
        [],
        trigger,
        CTX,
        hold=HOLD if trigger is Trigger.HOLD else None,
        arrangement=ARRANGEMENT,
        reason="because",
    )
    after = decision.case
    stage_index = STAGE_ORDER.index(case.stage)
    match expected.rule:
        case Rule.REJECT:
            assert decision.rejected == expected.why
            assert after is None
        case Rule.IGNORE:
            assert after is None
            assert decision.rejected is None
            assert decision.timeline[0].kind == "ignored"
        case Rule.STAY:
            assert decision.rejected is None
            assert after is None or after.phase is phase
        case Rule.ADVANCE:
            assert after is not None
            assert STAGE_ORDER.index(after.stage) == stage_index + 1
        case Rule.TO_LITIGATION:
            assert after is not None
            assert after.stage is Stage.LITIGATION
        case Rule.TO_ENFORCEMENT:
            assert after is not None
            assert after.stage is Stage.ENFORCEMENT
        case Rule.BREAK_ARRANGEMENT:
            assert after is not None
            assert after.arrangement is None
            # A pre-delinquency case's loan is not overdue: a broken plan advances nothing.
            moved = Phase(case.stage.value) in PRE_LEGAL and case.pre_delinquency is None
            assert STAGE_ORDER.index(after.stage) == stage_index + (1 if moved else 0)
        case Rule.END_ARRANGEMENT:
            assert after is not None
            assert after.arrangement is None
            assert after.stage is case.stage
        case Rule.HOLD:
            assert after is not None
            assert after.phase is Phase.HELD
        case Rule.RESUME | Rule.REOPEN:
            assert after is not None
            assert after.is_open
            assert after.stage is case.stage
            assert (
                any(isinstance(e, d.RequestBalanceCheck) for e in decision.effects)
                or not DEFAULT_POLICY.for_stage(case.stage).contacts
            )
        case Rule.ARRANGE:
            assert after is not None
            assert after.arrangement is not None
            # A pre-delinquency case stays one under its plan (it never escalates either way).
            assert after.phase is (
                Phase.PRE_DELINQUENCY if case.pre_delinquency else Phase.ARRANGED
            )
        case Rule.TO_COLLECTION:
            assert after is not None
            assert after.pre_delinquency is None
            assert after.stage is Stage.WARNING
            assert after.case_id == case.case_id
            assert after.status is (CaseStatus.HELD if phase is Phase.HELD else CaseStatus.OPEN)
        case _:
            exit_ = Exit(expected.rule.value.removeprefix("close_"))
            assert after is not None
            assert after.status is CaseStatus.CLOSED
            assert after.exit is exit_
            assert d.CancelContacts(exit_.value) in decision.effects


@pytest.mark.parametrize("trigger", list(Trigger))
def test_settled_written_off_and_closed_are_absorbing(trigger: Trigger) -> None:
    for phase in EXITS:
        rule = TRANSITIONS[(phase, trigger)].rule
        if phase is Phase.REPAID and trigger is Trigger.REPAYMENT_REVERSED:
            assert rule is Rule.REOPEN  # the payment that closed it never happened
        elif phase in (Phase.REPAID, Phase.CLOSED) and trigger is Trigger.FELL_OVERDUE:
            # Only a case that ended pre-delinquent (expired, repaid) gets this trigger: its
            # loan fell overdue since, and the same case collects.
            assert rule is Rule.TO_COLLECTION
        else:
            assert rule in (Rule.IGNORE, Rule.REJECT), (phase, trigger)


def test_the_diagram_names_every_phase() -> None:
    diagram = mermaid()
    for phase in Phase:
        assert phase.value in diagram
