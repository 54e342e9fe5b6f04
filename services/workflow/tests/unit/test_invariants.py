"""Invariants of the lifecycle under any sequence of inputs (hypothesis, stateful).

- no stage is skipped, except by suspected fraud, refusal to communicate or an
  unreasonable proposal (straight to litigation) and a judgment (to enforcement);
- settled, written off and closed are absorbing; repaid is left only by a reversal;
- a held case asks for no balance check and issues no contact;
- no contact command without a ledger confirmation for that very pending check.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.lifecycle import Phase
from workflow.domain.model import Case, CaseStatus, ContactIntent, Exit, IntentStatus, Timer
from workflow.domain.policy import DEFAULT_POLICY, STAGE_ORDER, Stage

START = datetime(2026, 1, 1, tzinfo=UTC)
JUMPS = {"fraud", "proposal_unreasonable", "refused", "enforcement_applied"}


class CaseLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.n = 0
        self.case: Case | None = None
        self.intents: dict[str, ContactIntent] = {}
        self.timers: list[Timer] = []
        self.as_of = START
        self.outstanding = Decimal("10000")

    def _id(self) -> str:
        self.n += 1
        return f"x{self.n}"

    def _run(self, event: d.Input, why: str = "") -> None:
        cause = self._id()
        before = self.case
        pending = [i for i in self.intents.values() if i.is_pending]
        named = [i for i in self.intents.values() if not i.is_pending]
        decision = d.decide(
            before,
            pending + named,
            event,
            DEFAULT_POLICY,
            self.now,
            lambda label: f"{cause}/{label}",
        )
        if decision.rejected is not None:
            assert decision.case is None
            assert not decision.effects
            return
        after = decision.case or before
        self._check_transition(before, after, why)
        if (
            before is not None
            and before.phase is Phase.HELD
            and after is not None
            and after.phase is Phase.HELD
        ):
            assert not any(
                isinstance(e, d.RequestBalanceCheck | d.IssueContactCommand)
                for e in decision.effects
            )
        for effect in decision.effects:
            if isinstance(effect, d.IssueContactCommand):
                assert isinstance(event, m.BalanceConfirmed)
                assert effect.intent.check_id == event.check_id
                previous = self.intents[effect.intent.intent_id]
                assert previous.status is IntentStatus.AWAITING_CONFIRMATION
                assert after is not None
                assert after.is_open
        for intent in decision.intents:
            self.intents[intent.intent_id] = intent
        self.timers.extend(decision.timers)
        self.case = after

    def _check_transition(self, before: Case | None, after: Case | None, why: str) -> None:
        if before is None or after is None:
            return
        if before.status is CaseStatus.CLOSED:
            if before.exit is Exit.REPAID and why == "reversal":
                return
            assert after == before, "an exited case must not change"
            return
        if after.status is CaseStatus.CLOSED:
            return
        step = STAGE_ORDER.index(after.stage) - STAGE_ORDER.index(before.stage)
        if why in JUMPS:
            assert step >= 0
        elif why == "partial":
            assert step in (-1, 0)
        else:
            assert step in (0, 1), (before.stage, after.stage, why)

    @rule()
    def open_or_report(self) -> None:
        self.as_of += timedelta(days=1)
        dpd = (self.as_of - START).days
        self._run(
            m.OverdueReported(
                self._id(),
                "L1",
                "B1",
                "consumer-loan",
                "CNY",
                Decimal("100"),
                self.outstanding,
                dpd,
                self.as_of,
                "Asia/Shanghai",
                "CN",
            )
        )

    @rule(days=st.integers(0, 40))
    def time_passes(self, days: int) -> None:
        self.now += timedelta(days=days)
        due = [t for t in self.timers if t.due_at <= self.now]
        self.timers = [t for t in self.timers if t.due_at > self.now]
        for timer in due:
            if self.case is not None:
                self._run(m.TimerFired(self._id(), timer.kind.value, timer.token, timer.due_at))

    @precondition(lambda self: self.case is not None)
    @rule(confirm=st.booleans(), reason=st.sampled_from(["nothing_owed", "projection_stale"]))
    def ledger_answers(self, confirm: bool, reason: str) -> None:
        waiting = [
            i for i in self.intents.values() if i.status is IntentStatus.AWAITING_CONFIRMATION
        ]
        if not waiting:
            return
        intent = waiting[0]
        if confirm:
            self._run(
                m.BalanceConfirmed(
                    self._id(),
                    intent.check_id,
                    self._id(),
                    self.outstanding,
                    3,
                    self.now,
                    self.now + timedelta(minutes=30),
                )
            )
        else:
            self._run(m.BalanceRefused(self._id(), intent.check_id, reason, ""))

    @precondition(lambda self: self.case is not None and self.case.is_open)
    @rule()
    def ledger_answers_from_before_a_repayment(self) -> None:
        """An answer computed before a repayment the case applied since its check was asked
        leaves the case's balance as the repayment set it."""
        assert self.case is not None
        paid_at = self.case.money_applied_at
        waiting = [
            i
            for i in self.intents.values()
            if i.status is IntentStatus.AWAITING_CONFIRMATION
            and paid_at is not None
            and paid_at > i.created_at
        ]
        if not waiting:
            return
        kept = self.case.outstanding
        self._run(
            m.BalanceConfirmed(
                self._id(),
                waiting[0].check_id,
                self._id(),
                kept + Decimal("777"),
                3,
                self.now,
                self.now + timedelta(minutes=30),
            )
        )
        assert self.case is not None
        assert self.case.outstanding == kept

    @precondition(lambda self: self.case is not None)
    @rule(share=st.sampled_from(["0.3", "0.6", "1"]), minutes=st.integers(0, 5))
    def borrower_pays(self, share: str, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)  # often while a balance check is out
        amount = (self.outstanding * Decimal(share)).quantize(Decimal("1"))
        self.outstanding -= amount
        self._run(
            m.RepaymentReceived(self._id(), self._id(), amount, self.outstanding, self.now),
            "partial",
        )

    @precondition(lambda self: self.case is not None)
    @rule()
    def payment_bounces(self) -> None:
        self.outstanding += Decimal("500")
        self._run(
            m.RepaymentReversed(self._id(), "R", Decimal("500"), self.outstanding, self.now),
            "reversal",
        )

    @precondition(lambda self: self.case is not None)
    @rule(outcome=st.sampled_from(["unanswered", "answered", "sent"]))
    def contact_outcome(self, outcome: str) -> None:
        self._run(m.ContactOutcomeReported(self._id(), "c", "i", "voice", outcome, ""), "refused")

    @precondition(lambda self: self.case is not None)
    @rule(
        kind=st.sampled_from(["hardship", "dispute", "breathing_space", "operator"]),
        back=st.integers(0, 90),
        lasts=st.none() | st.integers(-5, 120),
    )
    def hold(self, kind: str, back: int, lasts: int | None) -> None:
        """Backdated by ``back`` days, ending ``lasts`` days from now (or open-ended)."""
        since = self.now - timedelta(days=back)
        until = self.now + timedelta(days=lasts) if lasts is not None else None
        before = self.case.hold if self.case is not None else None
        self._run(
            m.RequestHold(
                self._id(),
                kind,
                "reason",
                "agent",
                until=until,
                effective_from=since if back else None,
            )
        )
        hold = self.case.hold if self.case is not None else None
        if hold is None or hold == before:
            return  # refused
        assert hold.since == since <= self.now
        assert hold.until is None or hold.until > self.now
        if kind == "breathing_space":
            assert hold.until is not None
            assert hold.until <= since + DEFAULT_POLICY.breathing_space
        if hold.until is not None:
            assert (hold.hold_id, hold.until) in {(t.token, t.due_at) for t in self.timers}

    @precondition(lambda self: self.case is not None)
    @rule(verified=st.booleans())
    def resume(self, verified: bool) -> None:
        self._run(m.RequestResume(self._id(), "reason", "agent", "verified" if verified else None))

    @precondition(lambda self: self.case is not None)
    @rule(kind=st.sampled_from(["promise_to_pay", "instalment_plan"]))
    def arrange(self, kind: str) -> None:
        n = 1 if kind == "promise_to_pay" else 3
        schedule = tuple(
            m.InstalmentTerms(self.now + timedelta(days=10 * (k + 1)), Decimal("1000"))
            for k in range(n)
        )
        self._run(m.RecordArrangement(self._id(), kind, schedule, "agent"))

    @precondition(lambda self: self.case is not None)
    @rule(kind=st.sampled_from(["manual", "fraud", "proposal_unreasonable"]))
    def escalate(self, kind: str) -> None:
        self._run(
            m.RequestEscalation(self._id(), kind, "reason", "agent"),
            "" if kind == "manual" else kind,
        )

    @precondition(lambda self: self.case is not None)
    @rule(milestone=st.sampled_from(["registered", "judgment", "enforcement_applied"]))
    def legal(self, milestone: str) -> None:
        self._run(m.RecordLegalMilestone(self._id(), milestone, "ref", "legal"), milestone)

    @precondition(lambda self: self.case is not None)
    @rule(exit_=st.sampled_from(["settled", "written_off", "closed"]))
    def close(self, exit_: str) -> None:
        self._run(m.RequestClosure(self._id(), exit_, "reason", "agent"))

    @invariant()
    def held_cases_have_a_hold_and_closed_ones_an_exit(self) -> None:
        if self.case is None:
            return
        assert (self.case.status is CaseStatus.HELD) == (self.case.hold is not None)
        assert (self.case.status is CaseStatus.CLOSED) == (self.case.exit is not None)
        assert self.case.stage in Stage


CaseLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCaseLifecycle = CaseLifecycle.TestCase


@given(paid=st.integers(0, 10_000), after_s=st.integers(-3600, 3600), reversed_=st.booleans())
@settings(max_examples=200, deadline=None)
def test_money_read_before_the_overdue_report_decides_as_if_read_after(
    paid: int, after_s: int, reversed_: bool
) -> None:
    """Topics are consumed independently: a repayment (or its reversal) read before the
    overdue report that opens the case leaves the case as if it were read after it."""
    owed = Decimal("10000")
    at = START + timedelta(seconds=after_s)
    left = owed - paid
    money: m.RepaymentReceived | m.RepaymentReversed = (
        m.RepaymentReversed("e-r", "R1", Decimal(paid), owed, at)
        if reversed_
        else m.RepaymentReceived("e-r", "R1", Decimal(paid), left, at)
    )
    report = m.OverdueReported(
        "e-o",
        "L1",
        "B1",
        "consumer-loan",
        "CNY",
        Decimal("100"),
        owed,
        30,
        START,
        "Asia/Shanghai",
        "CN",
    )

    def ids(label: str) -> str:
        return f"id-{label}"

    now = START + timedelta(hours=2)
    opened = d.decide(None, [], report, DEFAULT_POLICY, now, ids)
    assert opened.case is not None
    after = (
        d.decide(opened.case, opened.intents, money, DEFAULT_POLICY, now, ids).case or opened.case
    )
    seen = m.MoneySeen(
        money.event_id,
        "reversal" if reversed_ else "repayment",
        money.repayment_id,
        money.amount,
        money.outstanding_after,
        money.at,
    )
    first = d.decide(None, [], replace(report, money_seen=seen), DEFAULT_POLICY, now, ids).case
    assert first is not None
    if at <= START:
        # Older than the report: already in its figures, as the report read last says.
        assert first.outstanding == owed
        assert first.is_open
        return
    assert (first.status, first.exit) == (after.status, after.exit)
    assert first.outstanding == after.outstanding or after.is_closed
