"""Early warning: pre-delinquency cases from risk signals on current loans, without I/O.

The rules (docs/early-warning.md): a signal at or above the product's threshold opens a
pre-delinquency case that reminds the borrower, and only the borrower, and never escalates;
it ends when the signal expires or the loan is repaid; an overdue report makes it an
ordinary case, the same case with the same history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from types import SimpleNamespace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from collections_kit.clock import derived_id
from collections_kit.db import _document
from workflow.adapters.journal import encode_input, replay
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.lifecycle import Phase
from workflow.domain.model import (
    Case,
    CaseStatus,
    ContactIntent,
    Exit,
    IntentStatus,
    Timer,
    TimerKind,
)
from workflow.domain.policy import DEFAULT_POLICY, PolicyBook, Stage

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = DEFAULT_POLICY
assert POLICY.early_warning is not None
EARLY = POLICY.early_warning


def ids(label: str) -> str:
    return f"id-{label}"


def signal(
    score: str = "0.90",
    *,
    valid_for: timedelta = timedelta(days=30),
    observed_at: datetime = NOW,
    signal_id: str = "S1",
) -> m.RiskSignalReceived:
    return m.RiskSignalReceived(
        event_id=f"e-{signal_id}",
        signal_id=signal_id,
        loan_id="L1",
        borrower_id="B1",
        product="consumer-loan",
        kind="income_drop",
        score=Decimal(score),
        currency="CNY",
        outstanding=Decimal("5000.00"),
        observed_at=observed_at,
        valid_until=observed_at + valid_for,
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
    )


def overdue(dpd: int = 3, *, as_of: datetime = NOW) -> m.OverdueReported:
    return m.OverdueReported(
        "e-overdue",
        "L1",
        "B1",
        "consumer-loan",
        "CNY",
        Decimal("400.00"),
        Decimal("5000.00"),
        dpd,
        as_of,
        "Asia/Shanghai",
        "CN",
    )


def run(
    case: Case | None, event: d.Input, intents: Sequence[ContactIntent] = (), at: datetime = NOW
) -> d.Decision:
    return d.decide(case, list(intents), event, POLICY, at, ids)


def pre_case() -> tuple[Case, d.Decision]:
    decision = run(None, signal())
    assert decision.case is not None
    return decision.case, decision


def fired(timer: Timer, case: Case, intents: Sequence[ContactIntent] = ()) -> d.Decision:
    return run(
        case, m.TimerFired("t", timer.kind.value, timer.token, timer.due_at), intents, timer.due_at
    )


def test_a_signal_above_the_threshold_opens_a_pre_delinquency_case() -> None:
    case, decision = pre_case()
    assert case.phase is Phase.PRE_DELINQUENCY
    assert case.pre_delinquency is not None
    assert case.pre_delinquency.valid_until == NOW + timedelta(days=30)
    assert (case.days_past_due, case.amount_overdue, case.stage) == (0, Decimal(0), Stage.WARNING)
    assert d.AnnounceCaseOpened() in decision.effects
    assert decision.timeline[0].kind == "pre_delinquency_opened"
    # The borrower only, each contact waiting for the ledger's confirmation.
    assert [(i.recipient, i.template) for i in decision.intents] == [
        (c.recipient, c.template) for c in EARLY.contacts
    ]
    assert all(i.status is IntentStatus.AWAITING_CONFIRMATION for i in decision.intents)
    assert not any(isinstance(e, d.IssueContactCommand) for e in decision.effects)
    # No stage time limit: it never escalates; it expires, and reminds until then.
    assert {t.kind for t in decision.timers} == {
        TimerKind.SIGNAL_EXPIRY,
        TimerKind.EARLY_WARNING_REMINDER,
    }


def test_below_the_threshold_or_expired_a_signal_opens_nothing() -> None:
    low = str(EARLY.threshold - Decimal("0.01"))
    assert run(None, signal(low)) == d.Decision(case=None)
    late = signal(observed_at=NOW - timedelta(days=31))
    assert run(None, late) == d.Decision(case=None)


def test_money_seen_after_the_signal_was_observed_is_news_to_it() -> None:
    """As for an overdue report: the newest repayment of a loan without a case."""
    later = m.MoneySeen("e0", "repayment", "R1", Decimal("1000"), Decimal("4000"), NOW)
    paid = replace(signal(observed_at=NOW - timedelta(hours=1)), money_seen=later)
    case = run(None, paid).case
    assert case is not None
    assert case.outstanding == Decimal("4000")
    older = replace(later, at=NOW - timedelta(hours=2))
    case = run(None, replace(paid, money_seen=older)).case
    assert case is not None
    assert case.outstanding == Decimal("5000.00")
    repaid = replace(later, outstanding_after=Decimal(0))
    assert run(None, replace(paid, money_seen=repaid)) == d.Decision(case=None)


def test_a_product_without_early_warning_opens_nothing() -> None:
    policy = replace(POLICY, early_warning=None)
    assert d.decide(None, [], signal("1"), policy, NOW, ids) == d.Decision(case=None)


def test_a_signal_on_an_overdue_loans_case_is_only_noted() -> None:
    ordinary = run(None, overdue()).case
    assert ordinary is not None
    decision = run(ordinary, signal())
    assert decision.case is None
    assert [e.kind for e in decision.timeline] == ["risk_signal_noted"]
    assert decision.timeline[0].detail["why"] == "the loan is already overdue"


def test_a_later_signal_extends_it_and_the_older_expiry_goes_stale() -> None:
    case, opened = pre_case()
    (first,) = [t for t in opened.timers if t.kind is TimerKind.SIGNAL_EXPIRY]
    later = run(case, signal(valid_for=timedelta(days=60), signal_id="S2"))
    assert later.case is not None
    assert later.case.pre_delinquency is not None
    assert later.case.pre_delinquency.valid_until == NOW + timedelta(days=60)
    assert later.case.pre_delinquency.signal_id == "S1"  # the one that opened it
    assert [t.kind for t in later.timers] == [TimerKind.SIGNAL_EXPIRY]
    assert not d.timer_is_current(later.case, first.kind, first.token)
    assert fired(first, later.case).timeline[0].kind == "timer_stale"
    # An earlier or weaker one changes nothing but the timeline.
    for weaker in (signal(valid_for=timedelta(days=10), signal_id="S3"), signal("0.1")):
        noted = run(later.case, weaker)
        assert noted.case is None
        assert [e.kind for e in noted.timeline] == ["risk_signal_noted"]


def test_it_ends_when_the_signal_expires() -> None:
    case, opened = pre_case()
    (expiry,) = [t for t in opened.timers if t.kind is TimerKind.SIGNAL_EXPIRY]
    decision = fired(expiry, case, opened.intents)
    assert decision.case is not None
    assert (decision.case.status, decision.case.exit) == (CaseStatus.CLOSED, Exit.CLOSED)
    assert d.CancelContacts("closed") in decision.effects
    assert all(i.status is IntentStatus.CANCELLED for i in decision.intents)


def test_a_new_signal_after_expiry_makes_it_pre_delinquent_again() -> None:
    case, opened = pre_case()
    (expiry,) = [t for t in opened.timers if t.kind is TimerKind.SIGNAL_EXPIRY]
    closed = fired(expiry, case).case
    assert closed is not None
    later = expiry.due_at + timedelta(days=10)
    decision = run(closed, signal(observed_at=later, signal_id="S9"), at=later)
    again = decision.case
    assert again is not None
    assert again.case_id == case.case_id
    assert again.phase is Phase.PRE_DELINQUENCY
    assert again.pre_delinquency is not None
    assert again.pre_delinquency.signal_id == "S9"
    assert decision.timeline[0].kind == "pre_delinquency_reopened"
    assert d.AnnounceCaseOpened() in decision.effects
    assert {i.recipient for i in decision.intents} == {"debtor"}
    assert {t.kind for t in decision.timers} == {
        TimerKind.SIGNAL_EXPIRY,
        TimerKind.EARLY_WARNING_REMINDER,
    }
    # A repaid one stays closed: a signal is only noted.
    repaid = run(case, m.RepaymentReceived("e-r", "R1", Decimal("5000"), Decimal(0), NOW)).case
    assert repaid is not None
    noted = run(repaid, signal(signal_id="S10"))
    assert noted.case is None
    assert [e.kind for e in noted.timeline] == ["risk_signal_noted"]


def test_it_ends_when_the_loan_is_repaid() -> None:
    case, _ = pre_case()
    decision = run(case, m.RepaymentReceived("e-r", "R1", Decimal("5000"), Decimal(0), NOW))
    assert decision.case is not None
    assert decision.case.exit is Exit.REPAID


def test_a_reminder_contacts_the_borrower_again_and_sets_the_next() -> None:
    case, opened = pre_case()
    (reminder,) = [t for t in opened.timers if t.kind is TimerKind.EARLY_WARNING_REMINDER]
    assert reminder.due_at == NOW + EARLY.reminder_every
    decision = fired(reminder, case, opened.intents)
    assert decision.timeline[0].kind == "pre_delinquency_reminder"
    assert {i.recipient for i in decision.intents} == {"debtor"}
    assert len(decision.intents) == len(EARLY.contacts)
    (following,) = decision.timers
    assert following.kind is TimerKind.EARLY_WARNING_REMINDER
    assert following.due_at == reminder.due_at + EARLY.reminder_every


def test_an_overdue_report_makes_it_an_ordinary_case_with_the_same_id() -> None:
    case, opened = pre_case()
    # Reported as of before the signal was observed: still news to a pre-delinquency case.
    decision = run(case, overdue(as_of=NOW - timedelta(days=1)), opened.intents)
    after = decision.case
    assert after is not None
    assert after.case_id == case.case_id
    assert after.pre_delinquency is None
    assert after.phase is Phase.WARNING
    assert (after.days_past_due, after.amount_overdue) == (3, Decimal("400.00"))
    assert decision.timeline[0].kind == "pre_delinquency_ended"
    assert decision.timeline[0].detail["trigger"] == "fell_overdue"
    # The collections case opens here, as an overdue report opens one (the measures' start).
    entry = decision.timeline[1]
    assert (entry.kind, entry.stage_before, entry.stage_after) == (
        "case_opened",
        None,
        Stage.WARNING,
    )
    # The warning stage's own contacts and time limit take over.
    assert {t.kind for t in decision.timers} == {TimerKind.STAGE_TIME_LIMIT}
    warning = POLICY.for_stage(Stage.WARNING).contacts
    new = [i for i in decision.intents if i.status is IntentStatus.AWAITING_CONFIRMATION]
    assert [i.template for i in new] == [c.template for c in warning]
    superseded = [i for i in decision.intents if i.status is IntentStatus.CANCELLED]
    assert {i.reason for i in superseded} == {"superseded_by_delinquency"}
    # Its old timers mean nothing any more.
    for timer in opened.timers:
        assert not d.timer_is_current(after, timer.kind, timer.token)


def test_an_expired_pre_delinquency_case_reopens_as_an_ordinary_one_when_overdue() -> None:
    case, opened = pre_case()
    (expiry,) = [t for t in opened.timers if t.kind is TimerKind.SIGNAL_EXPIRY]
    closed = fired(expiry, case).case
    assert closed is not None
    decision = run(closed, overdue(), at=expiry.due_at + timedelta(days=3))
    assert decision.case is not None
    assert decision.case.case_id == case.case_id
    assert decision.case.is_open
    assert decision.case.phase is Phase.WARNING
    assert d.AnnounceCaseOpened() in decision.effects


def test_a_held_pre_delinquency_case_falls_overdue_and_stays_held() -> None:
    case, _ = pre_case()
    held = run(case, m.RequestHold("h", "hardship", "job loss", "agent")).case
    assert held is not None
    decision = run(held, overdue())
    assert decision.case is not None
    assert decision.case.phase is Phase.HELD
    assert decision.case.pre_delinquency is None
    assert not decision.effects


def test_nobody_escalates_a_pre_delinquency_case() -> None:
    case, _ = pre_case()
    for kind in ("manual", "fraud", "proposal_unreasonable"):
        decision = run(case, m.RequestEscalation(f"r-{kind}", kind, "why", "agent"))
        assert decision.rejected is not None
        assert "pre-delinquency" in decision.rejected
    silent = replace(case, unanswered_contacts=POLICY.unanswered_limit - 1)
    decision = run(silent, m.ContactOutcomeReported("e", "c", "i", "email", "unanswered", ""))
    assert decision.case is not None
    assert decision.case.phase is Phase.PRE_DELINQUENCY
    assert decision.timeline[-1].kind == "ignored"


def _proposal(
    request_id: str, down: str, months: int = 3, owed: Decimal = Decimal(5000)
) -> m.SubmitProposal:
    """``down`` now, the rest of ``owed`` in ``months`` monthly instalments (the last one
    takes the rounding), as the borrower portal would send it."""
    rest = owed - Decimal(down)
    each = (rest / months).quantize(Decimal("0.01"))
    amounts = [each] * (months - 1) + [rest - each * (months - 1)]
    return m.SubmitProposal(
        request_id=request_id,
        actor="portal",
        via="portal",
        down_payment=m.InstalmentTerms(NOW + timedelta(days=1), Decimal(down)),
        instalments=tuple(
            m.InstalmentTerms(NOW + timedelta(days=30 * (k + 1)), amount)
            for k, amount in enumerate(amounts)
        ),
    )


def test_an_accepted_offer_is_a_plan_and_breaking_it_escalates_nothing() -> None:
    case, _ = pre_case()
    decision = run(case, _proposal("p1", "500.00"))
    arranged = decision.case
    assert arranged is not None
    assert arranged.arrangement is not None
    assert arranged.phase is Phase.PRE_DELINQUENCY
    assert run(arranged, _proposal("p2", "500.00")).rejected == "one arrangement at a time"
    due = next(t for t in decision.timers if t.kind is TimerKind.ARRANGEMENT_DUE)
    broken = fired(due, arranged)
    assert broken.case is not None
    assert broken.case.arrangement is None
    assert broken.case.stage is Stage.WARNING
    assert broken.case.phase is Phase.PRE_DELINQUENCY
    assert not any(isinstance(e, d.AnnounceStageChanged) for e in broken.effects)


def test_unreasonable_proposals_do_not_send_a_pre_delinquency_case_to_court() -> None:
    case, _ = pre_case()
    # Far below the floor: the rule fires at once for an ordinary case.
    decision = run(case, _proposal("p1", "1.00"))
    assert decision.case is not None
    assert decision.case.stage is Stage.WARNING
    assert decision.case.phase is Phase.PRE_DELINQUENCY
    kinds = [e.kind for e in decision.timeline]
    assert kinds == ["proposal_received", "proposal_refused", "ignored"]
    assert decision.timeline[-1].detail["trigger"] == "proposal_unreasonable"


def test_the_journal_of_a_pre_delinquency_story_replays_to_the_same_case() -> None:
    """Every input the app journals (signals, their timers, the overdue report), encoded as
    stored, folds through ``decide`` into the case the decisions made (ADR 0008)."""
    rows: list[SimpleNamespace] = []
    case: Case | None = None
    intents: dict[str, ContactIntent] = {}
    timers: list[Timer] = []
    story: list[tuple[datetime, d.Input]] = [
        (NOW, signal()),
        (NOW + timedelta(days=1), signal(valid_for=timedelta(days=50), signal_id="S2")),
    ]
    at = NOW
    for n in range(6):
        if n < len(story):
            at, event = story[n]
        else:
            timer = min(timers, key=lambda t: t.due_at)
            timers.remove(timer)
            at = timer.due_at
            event = m.TimerFired(f"t{n}", timer.kind.value, timer.token, timer.due_at)
        cause = f"cause-{n}"
        decision = d.decide(
            case, list(intents.values()), event, POLICY, at, partial(derived_id, cause)
        )
        assert decision.rejected is None
        case = decision.case or case
        intents.update({i.intent_id: i for i in decision.intents})
        timers.extend(decision.timers)
        input_type, payload = encode_input(event)
        ((stored,),) = json.loads(_document([{"payload": payload}], ("payload",)))
        rows.append(SimpleNamespace(input_type=input_type, payload=stored, at=at, cause_id=cause))
    overdue_at = at + timedelta(days=1)
    event = overdue(as_of=overdue_at)
    decision = d.decide(
        case, list(intents.values()), event, POLICY, overdue_at, partial(derived_id, "cause-x")
    )
    case = decision.case
    input_type, payload = encode_input(event)
    ((stored,),) = json.loads(_document([{"payload": payload}], ("payload",)))
    rows.append(
        SimpleNamespace(input_type=input_type, payload=stored, at=overdue_at, cause_id="cause-x")
    )
    assert case is not None
    assert case.pre_delinquency is None
    kinds = {row.payload.get("kind") for row in rows if row.input_type == "TimerFired"}
    assert "early_warning_reminder" in kinds
    assert replay(rows, PolicyBook()) == case


# --- the property: whatever arrives before the overdue report ------------------------------


class PreDelinquencyLifecycle(RuleBasedStateMachine):
    """Any inputs a pre-delinquency case can get, in any order, before its loan falls
    overdue: it never escalates and never commands a contact to anyone but the borrower;
    then an overdue report makes it an ordinary case, the same one."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.n = 0
        self.case: Case | None = None
        self.intents: dict[str, ContactIntent] = {}
        self.timers: list[Timer] = []
        self.outstanding = Decimal("5000")
        self.case_id = ""
        self.delinquent = False

    def _id(self) -> str:
        self.n += 1
        return f"x{self.n}"

    def _run(self, event: d.Input) -> d.Decision:
        cause = self._id()
        before = self.case
        decision = d.decide(
            before,
            list(self.intents.values()),
            event,
            POLICY,
            self.now,
            lambda label: f"{cause}/{label}",
        )
        if decision.rejected is not None:
            assert decision.case is None
            assert not decision.effects
            return decision
        if not self.delinquent:
            self._never_escalates(decision)
        for intent in decision.intents:
            self.intents[intent.intent_id] = intent
        self.timers.extend(decision.timers)
        self.case = decision.case or before
        return decision

    def _never_escalates(self, decision: d.Decision) -> None:
        for effect in decision.effects:
            assert not isinstance(effect, d.AnnounceStageChanged), effect
            if isinstance(effect, d.IssueContactCommand):
                assert effect.intent.recipient == "debtor"
        assert all(i.recipient == "debtor" for i in decision.intents)
        assert not any(
            t.kind in (TimerKind.STAGE_TIME_LIMIT, TimerKind.NOTICE_DEADLINE)
            for t in decision.timers
        )
        if decision.case is not None:
            assert decision.case.stage is Stage.WARNING
            assert decision.case.pre_delinquency is not None
            assert decision.case.phase in (Phase.PRE_DELINQUENCY, Phase.HELD, *_ENDED)

    @initialize()
    def a_risk_signal(self) -> None:
        self._run(signal())
        assert self.case is not None
        self.case_id = self.case.case_id

    def _waiting(self) -> list[ContactIntent]:
        return [i for i in self.intents.values() if i.status is IntentStatus.AWAITING_CONFIRMATION]

    @precondition(lambda self: not self.delinquent)
    @rule(
        score=st.sampled_from(["0.1", "0.69", "0.7", "0.95"]),
        days=st.integers(-40, 90),
    )
    def another_signal(self, score: str, days: int) -> None:
        observed = self.now - timedelta(days=1)
        valid_for = self.now + timedelta(days=days) - observed
        if valid_for <= timedelta(0):
            return  # the contract refuses a signal valid until before it was observed
        self._run(signal(score, valid_for=valid_for, observed_at=observed, signal_id=self._id()))

    # Also after the overdue report (the ordinary case's own rules apply then).
    @rule(days=st.integers(0, 20))
    def time_passes(self, days: int) -> None:
        self.now += timedelta(days=days)
        due = [t for t in self.timers if t.due_at <= self.now]
        self.timers = [t for t in self.timers if t.due_at > self.now]
        for timer in due:
            self._run(m.TimerFired(self._id(), timer.kind.value, timer.token, timer.due_at))

    @precondition(lambda self: not self.delinquent)
    @rule(confirm=st.booleans(), reason=st.sampled_from(["nothing_owed", "projection_stale"]))
    def ledger_answers(self, confirm: bool, reason: str) -> None:
        waiting = self._waiting()
        if not waiting:
            return
        check = waiting[0].check_id
        if confirm:
            self._run(
                m.BalanceConfirmed(
                    self._id(),
                    check,
                    self._id(),
                    self.outstanding,
                    3,
                    self.now,
                    self.now + timedelta(minutes=30),
                )
            )
        else:
            self._run(m.BalanceRefused(self._id(), check, reason, ""))

    @precondition(lambda self: not self.delinquent)
    @rule(share=st.sampled_from(["0.02", "0.3", "1"]))
    def borrower_pays(self, share: str) -> None:
        amount = (self.outstanding * Decimal(share)).quantize(Decimal("1"))
        self.outstanding -= amount
        self._run(m.RepaymentReceived(self._id(), self._id(), amount, self.outstanding, self.now))

    @precondition(lambda self: not self.delinquent)
    @rule()
    def payment_bounces(self) -> None:
        self.outstanding += Decimal("500")
        self._run(m.RepaymentReversed(self._id(), "R", Decimal("500"), self.outstanding, self.now))

    @precondition(lambda self: not self.delinquent)
    @rule(outcome=st.sampled_from(["unanswered", "refused", "answered", "cancelled"]))
    def contact_outcome(self, outcome: str) -> None:
        for _ in range(POLICY.unanswered_limit):
            self._run(m.ContactOutcomeReported(self._id(), "c", "i", "email", outcome, ""))

    @precondition(lambda self: not self.delinquent)
    @rule(kind=st.sampled_from(["hardship", "dispute", "operator"]), lasts=st.integers(1, 40))
    def hold(self, kind: str, lasts: int) -> None:
        until = self.now + timedelta(days=lasts)
        self._run(m.RequestHold(self._id(), kind, "reason", "agent", until=until))

    @precondition(lambda self: not self.delinquent)
    @rule()
    def resume(self) -> None:
        self._run(m.RequestResume(self._id(), "reason", "agent", "verified"))

    @precondition(lambda self: not self.delinquent)
    @rule(down=st.sampled_from(["1.00", "200.00", "500.00", "1000.00"]), months=st.integers(1, 9))
    def proposal(self, down: str, months: int) -> None:
        proposed = _proposal(self._id(), down, months, self.outstanding)
        self._run(
            replace(
                proposed,
                down_payment=replace(proposed.down_payment, due_at=self.now + timedelta(days=1)),
                instalments=tuple(
                    replace(i, due_at=self.now + timedelta(days=30 * (k + 1)))
                    for k, i in enumerate(proposed.instalments)
                ),
            )
        )

    @precondition(lambda self: not self.delinquent)
    @rule(kind=st.sampled_from(["manual", "fraud", "proposal_unreasonable"]))
    def escalate(self, kind: str) -> None:
        self._run(m.RequestEscalation(self._id(), kind, "reason", "agent"))

    @precondition(lambda self: not self.delinquent)
    @rule(milestone=st.sampled_from(["registered", "judgment", "enforcement_applied"]))
    def legal(self, milestone: str) -> None:
        self._run(m.RecordLegalMilestone(self._id(), milestone, "ref", "legal"))

    @precondition(lambda self: not self.delinquent)
    @rule(kind=st.sampled_from(["granted", "refused"]))
    def permit(self, kind: str) -> None:
        self._run(
            m.PermitNoted(
                self._id(), kind, "p", "borrower", "voice", "collector", "c1", "", "r", None, None
            )
        )

    @precondition(lambda self: not self.delinquent)
    @rule(dpd=st.integers(1, 200))
    def loan_falls_overdue(self, dpd: int) -> None:
        before = self.case
        assert before is not None
        self.delinquent = True
        self._run(
            m.OverdueReported(
                self._id(),
                "L1",
                "B1",
                "consumer-loan",
                "CNY",
                Decimal("400"),
                self.outstanding,
                dpd,
                self.now - timedelta(days=dpd),  # even reported as of long ago
                "Asia/Shanghai",
                "CN",
            )
        )
        after = self.case
        assert after is not None
        assert after.case_id == self.case_id  # the same case, its history kept
        if before.exit in (Exit.SETTLED, Exit.WRITTEN_OFF):
            assert after == before  # what a person ended stays ended
            return
        assert after.pre_delinquency is None
        assert after.stage is Stage.WARNING
        assert after.phase in (Phase.WARNING, Phase.HELD)

    @invariant()
    def the_case_is_the_one_the_signal_opened(self) -> None:
        assert self.case is not None
        assert self.case.case_id == self.case_id
        if not self.delinquent:
            assert self.case.pre_delinquency is not None


_ENDED = (Phase.REPAID, Phase.SETTLED, Phase.WRITTEN_OFF, Phase.CLOSED)

PreDelinquencyLifecycle.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestPreDelinquencyLifecycle = PreDelinquencyLifecycle.TestCase
