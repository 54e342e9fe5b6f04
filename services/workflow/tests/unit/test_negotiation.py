"""Proposals judged by the negotiation policy (domain/negotiation.py), and what ``decide``
makes of the answer: the plan, a counter, a refusal that counts, the unreasonable trigger.
Pure, no I/O; hypothesis for the properties a counter and an acceptance must have."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain import negotiation as n
from workflow.domain.model import Case, CaseStatus
from workflow.domain.policy import DEFAULT_POLICY, Charge, Stage

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
POLICY = DEFAULT_POLICY
TERMS = POLICY.negotiation
OWED = Decimal("10000.00")


def ids(label: str) -> str:
    return f"id-{label}"


def case(outstanding: Decimal = OWED, jurisdiction: str = "CN") -> Case:
    return Case(
        case_id="C1",
        loan_id="L1",
        borrower_id="B1",
        product="consumer-loan",
        currency="CNY",
        stage=Stage.FORMAL_NOTICE,
        status=CaseStatus.OPEN,
        exit=None,
        outstanding=outstanding,
        amount_overdue=Decimal("500.00"),
        days_past_due=35,
        last_overdue_as_of=NOW,
        borrower_time_zone="Asia/Shanghai",
        jurisdiction=jurisdiction,
        policy_version=POLICY.version,
        opened_at=NOW,
        updated_at=NOW,
    )


def proposal(
    down: str,
    months: int = 6,
    *,
    owed: Decimal = OWED,
    waivers: m.Waivers = m.Waivers(),
    groups: tuple[str, ...] = (),
    request_id: str = "r1",
) -> m.SubmitProposal:
    """``down`` now (tomorrow), the rest in ``months`` equal monthly instalments."""
    rest = owed - waivers.total - Decimal(down)
    each = (rest / months).quantize(Decimal("0.01"))
    amounts = [each] * (months - 1) + [rest - each * (months - 1)]
    return m.SubmitProposal(
        request_id=request_id,
        actor="collector:9",
        via="collector",
        down_payment=m.InstalmentTerms(NOW + timedelta(days=1), Decimal(down)),
        instalments=tuple(
            m.InstalmentTerms(NOW + timedelta(days=30 * (k + 1)), a) for k, a in enumerate(amounts)
        ),
        waivers=waivers,
        groups=groups,
    )


def evaluate(p: m.SubmitProposal, c: Case | None = None) -> n.Answer:
    c = c or case()
    return n.evaluate(p, c.outstanding, c.currency, c.jurisdiction, TERMS, NOW)


def decide(c: Case, p: d.Input, at: datetime = NOW) -> d.Decision:
    return d.decide(c, [], p, POLICY, at, ids)


# --- the answers ---------------------------------------------------------------------------


def test_ten_percent_down_and_six_months_is_accepted_as_the_plan() -> None:
    p = proposal("1000.00")
    assert evaluate(p).verdict is n.Verdict.ACCEPTED
    decision = decide(case(), p)
    assert decision.rejected is None
    assert decision.case is not None
    plan = decision.case.arrangement
    assert plan is not None
    assert plan.total == OWED
    assert plan.schedule[0].amount == Decimal("1000.00")
    assert len(plan.schedule) == 7
    kinds = [e.kind for e in decision.timeline]
    assert kinds[:3] == ["proposal_received", "proposal_accepted", "arrangement_recorded"]
    # One due-date timer per payment, as for an arrangement recorded by hand.
    assert len(decision.timers) == 7


def test_five_percent_down_is_countered_with_the_minimum() -> None:
    answer = evaluate(proposal("500.00"))
    assert answer.verdict is n.Verdict.COUNTERED
    assert [b.rule for b in answer.breaches] == ["min_down_payment"]
    assert answer.counter is not None
    assert answer.counter.down_payment.amount == Decimal("1000.00") == answer.floor
    # The rest is spread over the proposed dates and still adds up.
    assert n.problems(answer.counter, OWED, "CNY") == []
    assert [i.due_at for i in answer.counter.instalments] == [
        i.due_at for i in proposal("500.00").instalments
    ]
    # A supervisor could have agreed to it as it is.
    assert answer.approvable


def test_a_counter_is_on_the_timeline_and_changes_nothing_else() -> None:
    decision = decide(case(), proposal("500.00"))
    assert decision.case is None
    assert decision.timers == ()
    received, countered = decision.timeline
    assert received.kind == "proposal_received"
    assert countered.kind == "proposal_countered"
    assert countered.detail["counter"]["down_payment"]["amount"] == "1000.00"
    assert countered.detail["rules"][0]["rule"] == "min_down_payment"


def test_a_supervisor_may_accept_what_a_collector_may_not() -> None:
    p = proposal("500.00", groups=("supervisors",))
    answer = evaluate(p)
    assert answer.verdict is n.Verdict.ACCEPTED
    assert answer.approved
    decision = decide(case(), p)
    assert decision.timeline[1].detail["approved_by"] == "collector:9"


def test_a_term_beyond_the_maximum_is_countered_within_it() -> None:
    answer = evaluate(proposal("1000.00", months=9))
    assert answer.verdict is n.Verdict.COUNTERED
    assert [b.rule for b in answer.breaches] == ["max_term"]
    assert answer.counter is not None
    last = answer.counter.instalments[-1].due_at.date()
    assert last <= n.add_months(NOW.date(), 6)


def test_the_uk_gives_more_time() -> None:
    assert evaluate(proposal("1000.00", months=9), case(jurisdiction="UK")).verdict is (
        n.Verdict.ACCEPTED
    )


def test_waivers_are_cut_to_what_the_policy_allows_and_principal_is_not_waived() -> None:
    asked = m.Waivers(penalty_interest=Decimal("1500.00"), principal=Decimal("200.00"))
    answer = evaluate(proposal("1000.00", waivers=asked))
    assert answer.verdict is n.Verdict.COUNTERED
    assert {b.rule for b in answer.breaches} == {"waiver.penalty_interest", "waiver.principal"}
    assert answer.counter is not None
    assert answer.counter.waivers == m.Waivers(penalty_interest=Decimal("1000.00"))
    assert n.problems(answer.counter, OWED, "CNY") == []


def test_far_below_the_floor_is_refused_and_counted() -> None:
    answer = evaluate(proposal("200.00"))
    assert answer.verdict is n.Verdict.REFUSED
    assert answer.unreasonable is None
    assert "refuse_below_floor_share" in {b.rule for b in answer.breaches}
    decision = decide(case(), proposal("200.00"))
    assert decision.case is not None
    assert decision.case.refused_proposals == (NOW,)
    assert decision.case.stage is Stage.FORMAL_NOTICE


def test_the_policys_number_of_refusals_fires_the_unreasonable_trigger() -> None:
    c = case()
    rule = TERMS.unreasonable
    for k in range(rule.refusals):
        decision = decide(c, proposal("200.00", request_id=f"r{k}"), NOW + timedelta(days=k))
        assert decision.case is not None
        c = decision.case
    assert c.stage is Stage.LITIGATION
    changed = [e for e in decision.timeline if e.kind == "stage_changed"]
    assert changed[0].detail["trigger"] == "proposal_unreasonable"
    assert "3 proposals refused within 90 days" in changed[0].detail["why"]
    refused = next(e for e in decision.timeline if e.kind == "proposal_refused")
    assert refused.detail["unreasonable"].startswith("3 proposals refused")
    # The count starts again after the trigger fired.
    assert c.refused_proposals == ()


def test_refusals_older_than_the_period_do_not_count() -> None:
    period = TERMS.unreasonable.period
    old = case()
    old = replace(old, refused_proposals=(NOW - period - timedelta(days=1), NOW - period))
    decision = decide(old, proposal("200.00"))
    assert decision.case is not None
    assert decision.case.stage is Stage.FORMAL_NOTICE
    assert decision.case.refused_proposals == (NOW,)


def test_nothing_down_is_unreasonable_by_itself() -> None:
    decision = decide(case(), proposal("0"))
    assert decision.case is not None
    assert decision.case.stage is Stage.LITIGATION
    refused = next(e for e in decision.timeline if e.kind == "proposal_refused")
    assert "unreasonable by itself" in refused.detail["unreasonable"]


def test_no_proposal_while_an_arrangement_runs_or_the_case_is_held() -> None:
    arranged = decide(case(), proposal("1000.00")).case
    assert arranged is not None
    assert decide(arranged, proposal("1000.00", request_id="r2")).rejected == (
        "one arrangement at a time"
    )
    held = decide(case(), m.RequestHold("h1", "hardship", "lost job", "ops")).case
    assert held is not None
    assert decide(held, proposal("1000.00")).rejected == "the case is on hold: resume it first"


# --- malformed proposals -------------------------------------------------------------------


def test_a_proposal_that_does_not_add_up_names_the_instalments() -> None:
    p = proposal("1000.00")
    short = replace(p, instalments=p.instalments[:-1])
    ((where, why),) = n.problems(short, OWED, "CNY")
    assert where == ("instalments",)
    assert "add up to" in why
    assert decide(case(), short).rejected is not None


def test_negative_and_unordered_amounts_and_dates_are_named() -> None:
    p = proposal("1000.00")
    first, second, *rest = p.instalments
    bad = replace(
        p,
        down_payment=m.InstalmentTerms(p.down_payment.due_at, Decimal("-1")),
        instalments=(second, first, *rest),
        waivers=m.Waivers(fees=Decimal("-5")),
    )
    where = [at for at, _ in n.problems(bad, OWED, "CNY")]
    assert ("down_payment", "amount") in where
    assert ("waivers", "fees") in where
    assert ("instalments", 1, "due_at") in where


def test_months_are_calendar_months() -> None:
    assert n.add_months(date(2026, 8, 31), 6) == date(2027, 2, 28)
    assert n.add_months(date(2026, 12, 4), 1) == date(2027, 1, 4)


def test_the_policy_file_and_the_default_agree_on_the_terms() -> None:
    assert TERMS.standard.min_down_payment_share == Decimal("0.10")
    assert TERMS.standard.max_term_months == 6
    assert TERMS.standard.waiver_share(Charge.PRINCIPAL) == 0


# --- properties ----------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("5000"), places=2)


@st.composite
def proposals(draw: st.DrawFn) -> tuple[Case, m.SubmitProposal]:
    owed = draw(st.decimals(min_value=Decimal("100"), max_value=Decimal("100000"), places=2))
    waivers = m.Waivers(
        penalty_interest=min(draw(amounts), owed / 4).quantize(Decimal("0.01")),
        fees=min(draw(amounts), owed / 8).quantize(Decimal("0.01")),
        principal=draw(st.sampled_from([Decimal(0), Decimal("10.00")])),
    )
    payable = owed - waivers.total
    down = (payable * draw(st.decimals(min_value=0, max_value=1, places=3))).quantize(
        Decimal("0.01")
    )
    gaps = draw(st.lists(st.integers(min_value=1, max_value=120), min_size=0, max_size=14))
    start = draw(st.integers(min_value=1, max_value=400))
    rest = payable - down
    count = min(len(gaps), int(rest / Decimal("0.01")))
    if rest > 0 and count == 0:
        down, count = payable, 0
    each = (rest / count).quantize(Decimal("0.01"), rounding="ROUND_DOWN") if count else 0
    cents = [Decimal(each)] * (count - 1) + [rest - Decimal(each) * (count - 1)] if count else []
    at = NOW + timedelta(days=start)
    dates = []
    for gap in gaps[:count]:
        at += timedelta(days=gap)
        dates.append(at)
    p = m.SubmitProposal(
        request_id="r",
        actor="a",
        via=draw(st.sampled_from(["collector", "agency", "portal"])),
        down_payment=m.InstalmentTerms(NOW + timedelta(days=start), down),
        instalments=tuple(m.InstalmentTerms(t, a) for t, a in zip(dates, cents, strict=True)),
        waivers=waivers,
        groups=draw(st.sampled_from([(), ("supervisors",), ("team-north",)])),
    )
    return case(owed, draw(st.sampled_from(["CN", "UK", "US"]))), p


@settings(max_examples=300, deadline=None)
@given(proposals())
def test_a_counter_proposed_back_is_accepted(drawn: tuple[Case, m.SubmitProposal]) -> None:
    c, p = drawn
    assert n.problems(p, c.outstanding, c.currency) == []
    answer = evaluate(p, c)
    if answer.verdict is not n.Verdict.COUNTERED:
        return
    assert answer.counter is not None
    assert n.problems(answer.counter, c.outstanding, c.currency) == []
    assert evaluate(answer.counter, c).verdict is n.Verdict.ACCEPTED


@settings(max_examples=300, deadline=None)
@given(proposals())
def test_an_accepted_proposal_meets_the_terms_its_proposer_may_agree_to(
    drawn: tuple[Case, m.SubmitProposal],
) -> None:
    c, p = drawn
    answer = evaluate(p, c)
    policy = TERMS.for_jurisdiction(c.jurisdiction)
    terms = policy.approved if "supervisors" in p.groups else policy.standard
    if answer.verdict is n.Verdict.ACCEPTED:
        assert p.down_payment.amount >= c.outstanding * terms.min_down_payment_share
        last = (p.instalments or (p.down_payment,))[-1].due_at.date()
        assert last <= n.add_months(NOW.date(), terms.max_term_months)
        for charge in Charge:
            assert n.waived(p, charge) <= c.outstanding * terms.waiver_share(charge)
        # And it becomes the plan: what the plan asks is what is owed less the waivers.
        decision = decide(c, p)
        assert decision.rejected is None
        assert decision.case is not None
        assert decision.case.arrangement is not None
        assert decision.case.arrangement.total == c.outstanding - p.waivers.total
    else:
        assert answer.breaches
        assert evaluate(p, c) == answer  # the same answer for the same proposal
