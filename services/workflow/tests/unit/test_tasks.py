"""Work queues without I/O: which situations make which task, routing from the policy file,
the lease rules, what each result does to the case, and (hypothesis) that no two running
leases ever share a borrower, whatever collectors do in whatever order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.adapters.policy_file import PolicyError, load_queue_policy
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain import tasks as t
from workflow.domain.lifecycle import Phase
from workflow.domain.model import Arrangement, ArrangementKind, Case, CaseStatus, Instalment
from workflow.domain.policy import DEFAULT_POLICY, Stage

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
POLICY = load_queue_policy()


def ids(label: str) -> str:
    return f"id-{label}"


def a_case(
    *,
    loan_id: str = "L1",
    borrower_id: str = "B1",
    stage: Stage = Stage.FORMAL_NOTICE,
    jurisdiction: str = "US",
    outstanding: str = "500.00",
) -> Case:
    opened = d.decide(
        None,
        [],
        m.OverdueReported(
            "e1",
            loan_id,
            borrower_id,
            "consumer-loan",
            "USD",
            Decimal("100"),
            Decimal(outstanding),
            35,
            NOW,
            "America/New_York",
            jurisdiction,
        ),
        DEFAULT_POLICY,
        NOW,
        ids,
    ).case
    assert opened is not None
    return replace(opened, stage=stage)


def a_task(
    task_id: str = "T1",
    *,
    borrower_id: str = "B1",
    queue: str = "calls",
    priority: int = 40,
    created_at: datetime = NOW,
) -> t.Task:
    return t.Task(
        task_id=task_id,
        case_id=f"C-{task_id}",
        loan_id=f"L-{task_id}",
        borrower_id=borrower_id,
        kind=t.TaskKind.CALL_AFTER_FORMAL_NOTICE,
        queue=queue,
        priority=priority,
        status=t.TaskStatus.OPEN,
        reason="entered formal_notice",
        created_at=created_at,
    )


# --- routing: policy data --------------------------------------------------------------------


def test_the_shipped_queue_policy_routes_every_kind_of_task() -> None:
    case = a_case()
    for kind in t.TaskKind:
        assert POLICY.route(kind, case).queue in POLICY.queues


def test_broken_promises_come_first_and_route_by_language() -> None:
    follow_up = POLICY.route(t.TaskKind.BROKEN_PROMISE_FOLLOW_UP, a_case())
    call = POLICY.route(t.TaskKind.CALL_AFTER_FORMAL_NOTICE, a_case())
    assert follow_up.priority < call.priority
    assert follow_up.queue == "promises"
    chinese = POLICY.route(t.TaskKind.BROKEN_PROMISE_FOLLOW_UP, a_case(jurisdiction="CN"))
    assert chinese.queue == "promises-zh"


def test_a_case_whose_last_promise_was_broken_is_routed_ahead() -> None:
    broken = Arrangement(
        "A1",
        ArrangementKind.PROMISE_TO_PAY,
        (Instalment(NOW, Decimal("100")),),
        NOW,
        outcome="broken",
    )
    case = replace(a_case(), last_arrangement=broken)
    assert POLICY.route(t.TaskKind.CALL_AFTER_FORMAL_NOTICE, case).queue == "promises"
    assert POLICY.route(t.TaskKind.CALL_AFTER_FORMAL_NOTICE, a_case()).queue == "calls"


def test_the_balance_band_picks_the_senior_negotiators() -> None:
    assert POLICY.band_of(Decimal("999.99")) == "small"
    assert POLICY.band_of(Decimal("1000")) == "medium"
    assert POLICY.band_of(Decimal("250000")) == "large"
    large = a_case(outstanding="50000")
    assert POLICY.route(t.TaskKind.NEGOTIATION, large).queue == "negotiation-senior"
    assert POLICY.route(t.TaskKind.NEGOTIATION, a_case()).queue == "negotiation"


def test_a_policy_without_a_catch_all_route_for_a_kind_is_refused(tmp_path: Path) -> None:
    text = Path(t.__file__).parent.parent.joinpath("policies", "queues.toml").read_text()
    path = tmp_path / "queues.toml"
    path.write_text(
        text.replace('kinds = ["legal_review"]', 'kinds = ["legal_review"]\nbands = ["large"]')
    )
    with pytest.raises(PolicyError, match="no route catches every legal_review task"):
        load_queue_policy(path)


def test_a_misspelt_route_condition_is_refused_not_ignored(tmp_path: Path) -> None:
    text = Path(t.__file__).parent.parent.joinpath("policies", "queues.toml").read_text()
    path = tmp_path / "queues.toml"
    path.write_text(text.replace('kinds = ["legal_review"]', 'kind = ["legal_review"]'))
    with pytest.raises(PolicyError, match="unknown route keys"):
        load_queue_policy(path)


# --- who may work which queue ------------------------------------------------------------------


def test_legal_review_is_worked_only_by_legal_staff() -> None:
    legal = t.Worker("collector:ana", frozenset({"legal"}))
    desk = t.Worker("collector:bo", frozenset({"zh-CN"}))
    POLICY.check_may_work("legal", legal)
    with pytest.raises(t.TaskRefusedError) as refused:
        POLICY.check_may_work("legal", desk)
    assert refused.value.status == 403
    assert "may not work the queue legal" in refused.value.detail
    assert "group legal" in refused.value.detail
    # Chinese cases by the Chinese desk; the open queues by anyone who works queues.
    POLICY.check_may_work("calls-zh", desk)
    with pytest.raises(t.TaskRefusedError):
        POLICY.check_may_work("calls-zh", legal)
    for worker in (legal, desk, t.Worker("collector:new")):
        POLICY.check_may_work("calls", worker)


@given(
    anyone=st.booleans(),
    named=st.frozensets(st.sampled_from(["c1", "c2", "c3"])),
    groups=st.frozensets(st.sampled_from(["g1", "g2", "g3"])),
    who=st.sampled_from(["c1", "c2", "c3", "c4"]),
    carries=st.frozensets(st.sampled_from(["g1", "g2", "g3", "g4"])),
)
def test_access_admits_exactly_anyone_the_named_and_the_groups_members(
    anyone: bool, named: frozenset[str], groups: frozenset[str], who: str, carries: frozenset[str]
) -> None:
    access = t.QueueAccess(anyone=anyone, collectors=named, groups=groups)
    expected = anyone or who in named or bool(groups & carries)
    assert access.admits(t.Worker(who, carries)) is expected


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            'legal = { groups = ["legal"] }\n',
            "",
            "no access entry says who may work the queue legal",
        ),
        ('legal = { groups = ["legal"] }', 'legal = { group = ["legal"] }', "unknown access keys"),
        ("legal = {", 'lgeal = { groups = ["x"] }\nlegal = {', "lgeal, which no route fills"),
        ("calls = { anyone = true }", 'calls = { anyone = true, groups = ["x"] }', "not both"),
        ("calls = { anyone = true }", 'calls = { anyone = "yes" }', "anyone must be true or false"),
    ],
)
def test_a_policy_that_leaves_a_queue_open_or_closed_by_mistake_is_refused(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    text = Path(t.__file__).parent.parent.joinpath("policies", "queues.toml").read_text()
    path = tmp_path / "queues.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyError, match=reason):
        load_queue_policy(path)


# --- which situations make which task ----------------------------------------------------------


def test_entering_the_formal_notice_stage_makes_a_call_task() -> None:
    case = replace(a_case(), stage=Stage.WARNING)
    decision = d.decide(
        case, [], m.RequestEscalation("r1", "manual", "no reply", "ops"), DEFAULT_POLICY, NOW, ids
    )
    changes = t.changes_for(case, decision.case, decision.timeline)
    assert changes.create == (
        t.NewTask(t.TaskKind.CALL_AFTER_FORMAL_NOTICE, "entered formal_notice"),
    )
    # The work of the other stages is no longer wanted.
    (stale,) = changes.withdraw
    assert stale.kinds == frozenset({t.TaskKind.GUARANTOR_CONTACT, t.TaskKind.LEGAL_REVIEW})


def test_repayment_in_full_withdraws_every_task_of_the_case() -> None:
    case = a_case()
    decision = d.decide(
        case,
        [],
        m.RepaymentReceived("e2", "R1", Decimal("500"), Decimal("0"), NOW),
        DEFAULT_POLICY,
        NOW,
        ids,
    )
    assert decision.case is not None
    assert decision.case.is_closed
    changes = t.changes_for(case, decision.case, decision.timeline)
    assert changes.withdraw == (t.Withdrawal("repaid"),)
    assert changes.create == ()


def test_a_hold_withdraws_every_task_of_the_case() -> None:
    case = a_case()
    decision = d.decide(
        case, [], m.RequestHold("r1", "hardship", "lost job", "ops"), DEFAULT_POLICY, NOW, ids
    )
    changes = t.changes_for(case, decision.case, decision.timeline)
    assert changes.withdraw == (t.Withdrawal("held"),)


def test_a_closure_withdraws_every_task_of_the_case() -> None:
    case = a_case()
    decision = d.decide(
        case, [], m.RequestClosure("r1", "settled", "agreed", "ops"), DEFAULT_POLICY, NOW, ids
    )
    assert t.changes_for(case, decision.case, decision.timeline).withdraw == (
        t.Withdrawal("settled"),
    )


def test_a_broken_promise_makes_a_follow_up() -> None:
    case = a_case()
    promised = d.decide(
        case,
        [],
        m.RecordArrangement(
            "r1",
            "promise_to_pay",
            (m.InstalmentTerms(NOW + timedelta(days=2), Decimal("100")),),
            "c1",
        ),
        DEFAULT_POLICY,
        NOW,
        ids,
    ).case
    assert promised is not None
    assert promised.arrangement is not None
    due = NOW + timedelta(days=2)
    fired = d.decide(
        promised,
        [],
        m.TimerFired("tm1", "arrangement_due", f"{promised.arrangement.arrangement_id}:0", due),
        DEFAULT_POLICY,
        due + timedelta(days=4),
        ids,
    )
    changes = t.changes_for(promised, fired.case, fired.timeline)
    assert t.NewTask(t.TaskKind.BROKEN_PROMISE_FOLLOW_UP, "promise broken") in changes.create


def test_a_task_takes_its_queue_and_priority_from_the_policy() -> None:
    task = t.new_task(
        t.NewTask(t.TaskKind.LEGAL_REVIEW, "entered litigation"), a_case(), POLICY, NOW, ids
    )
    assert (task.queue, task.priority, task.status) == ("legal", 60, t.TaskStatus.OPEN)
    assert task.task_id == "id-task/legal_review"


# --- leases ----------------------------------------------------------------------------------


def test_next_takes_the_most_urgent_then_the_oldest_task() -> None:
    old = a_task("T1", borrower_id="B1", created_at=NOW - timedelta(hours=1))
    urgent = a_task("T2", borrower_id="B2", priority=10)
    newer = a_task("T3", borrower_id="B3", priority=10, created_at=NOW + timedelta(seconds=1))
    assert t.most_urgent([old, urgent, newer], "calls", NOW) == urgent
    assert t.most_urgent([old, urgent], "promises", NOW) is None


def test_a_borrower_being_worked_is_skipped_across_all_their_loans() -> None:
    held = t.lease(a_task("T1", borrower_id="B1"), "c1", "lease-1", NOW, POLICY)
    other_loan = a_task("T2", borrower_id="B1", priority=1)
    someone_else = a_task("T3", borrower_id="B2")
    assert t.most_urgent([held, other_loan, someone_else], "calls", NOW) == someone_else


def test_a_lease_that_ran_out_returns_the_task() -> None:
    held = t.lease(a_task(), "c1", "lease-1", NOW, POLICY)
    later = NOW + POLICY.lease
    assert t.most_urgent([held], "calls", later - timedelta(seconds=1)) is None
    assert t.most_urgent([held], "calls", later) == held
    (returned,) = t.expire([held], later)
    assert returned.status is t.TaskStatus.OPEN
    assert returned.collector is None
    with pytest.raises(t.TaskRefusedError, match="lease ran out"):
        t.check_holder(held, "c1", later)


def test_only_the_holder_may_renew_release_or_record() -> None:
    held = t.lease(a_task(), "c1", "lease-1", NOW, POLICY)
    with pytest.raises(t.TaskRefusedError, match="do not hold"):
        t.release(held, "c2", NOW)
    with pytest.raises(t.TaskRefusedError, match="do not hold"):
        t.renew(a_task(), "c1", NOW, POLICY)
    renewed = t.renew(held, "c1", NOW + timedelta(minutes=10), POLICY)
    assert renewed.lease_until == NOW + timedelta(minutes=10) + POLICY.lease
    assert t.release(renewed, "c1", NOW).status is t.TaskStatus.OPEN


def test_renewals_are_limited() -> None:
    held = t.lease(a_task(), "c1", "lease-1", NOW, POLICY)
    for _ in range(POLICY.max_renewals):
        held = t.renew(held, "c1", NOW, POLICY)
    with pytest.raises(t.TaskRefusedError, match="renewed"):
        t.renew(held, "c1", NOW, POLICY)


def test_a_withdrawn_or_worked_task_takes_no_result() -> None:
    withdrawn = replace(a_task(), status=t.TaskStatus.WITHDRAWN, outcome="repaid")
    with pytest.raises(t.TaskRefusedError, match=r"withdrawn \(repaid\)"):
        t.check_holder(withdrawn, "c1", NOW)
    done = t.finish(t.lease(a_task(), "c1", "l", NOW, POLICY), t.ResultCode.NO_ANSWER, NOW)
    with pytest.raises(t.TaskRefusedError, match="already has a result"):
        t.check_holder(done, "c1", NOW)


# --- results act through the engine's own inputs ------------------------------------------------


def effect(
    result: t.ResultCode, promise: t.Promise | None = None, kind: t.TaskKind | None = None
) -> t.ResultEffect:
    task = a_task() if kind is None else replace(a_task(), kind=kind)
    return t.result_effect(
        task,
        result,
        t.Action.OUTBOUND_CALL,
        collector="c1",
        request_id="rq",
        note="",
        promise=promise,
        occurred_at=NOW,
    )


def test_each_result_maps_to_the_input_the_engine_already_decides() -> None:
    promise = t.Promise(Decimal("100"), NOW + timedelta(days=3))
    arranged = effect(t.ResultCode.PROMISE_TO_PAY, promise).input
    assert isinstance(arranged, m.RecordArrangement)
    assert arranged.kind == "promise_to_pay"
    assert arranged.schedule == (m.InstalmentTerms(promise.due_at, promise.amount),)
    dispute = effect(t.ResultCode.DISPUTE_RAISED).input
    assert isinstance(dispute, m.RequestHold)
    assert dispute.kind == "dispute"
    hardship = effect(t.ResultCode.HARDSHIP_DECLARED).input
    assert isinstance(hardship, m.RequestHold)
    assert hardship.kind == "hardship"
    outcomes = {
        r: effect(r).input
        for r in (
            t.ResultCode.REFUSED_TO_COMMUNICATE,
            t.ResultCode.NO_ANSWER,
            t.ResultCode.RIGHT_PARTY_CONTACT,
            t.ResultCode.REFUSED_TO_PAY,
        )
    }
    assert {
        r: o.outcome for r, o in outcomes.items() if isinstance(o, m.ContactOutcomeReported)
    } == {
        t.ResultCode.REFUSED_TO_COMMUNICATE: "refused",
        t.ResultCode.NO_ANSWER: "unanswered",
        t.ResultCode.RIGHT_PARTY_CONTACT: "answered",
        t.ResultCode.REFUSED_TO_PAY: "answered",
    }
    assert effect(t.ResultCode.WRONG_NUMBER).input is None


def test_a_refusal_to_pay_makes_a_negotiation_unless_it_was_one() -> None:
    assert effect(t.ResultCode.REFUSED_TO_PAY).follow_up == t.NewTask(
        t.TaskKind.NEGOTIATION, "refused to pay"
    )
    assert effect(t.ResultCode.REFUSED_TO_PAY, kind=t.TaskKind.NEGOTIATION).follow_up is None


def test_a_promise_result_without_the_promise_is_refused() -> None:
    with pytest.raises(t.TaskRefusedError, match="needs the promise"):
        effect(t.ResultCode.PROMISE_TO_PAY)


def test_refusals_to_communicate_count_towards_the_refusal_trigger() -> None:
    case = a_case()
    for n in range(DEFAULT_POLICY.unanswered_limit):
        refused = effect(t.ResultCode.REFUSED_TO_COMMUNICATE).input
        assert isinstance(refused, m.ContactOutcomeReported)
        decision = d.decide(case, [], replace(refused, event_id=f"rq{n}"), DEFAULT_POLICY, NOW, ids)
        assert decision.case is not None
        case = decision.case
    assert case.phase is Phase.LITIGATION


def test_a_right_party_contact_resets_the_refusal_count() -> None:
    case = replace(a_case(), unanswered_contacts=3)
    contact = effect(t.ResultCode.RIGHT_PARTY_CONTACT).input
    assert isinstance(contact, m.ContactOutcomeReported)
    decision = d.decide(case, [], contact, DEFAULT_POLICY, NOW, ids)
    assert decision.case is not None
    assert decision.case.unanswered_contacts == 0
    assert decision.case.status is CaseStatus.OPEN


# --- the property: one borrower, one collector at a time ----------------------------------------

COLLECTORS = ("c1", "c2", "c3")
BORROWERS = ("B1", "B2", "B3")
Step = tuple[str, int, int]  # (operation, collector index, task index or minutes)


def _running(tasks: dict[str, t.Task], now: datetime) -> list[t.Task]:
    return [
        x for x in tasks.values() if x.status is t.TaskStatus.LEASED and not x.lease_expired(now)
    ]


@settings(max_examples=300, deadline=None)
@given(
    borrowers=st.lists(st.sampled_from(BORROWERS), min_size=1, max_size=8),
    steps=st.lists(
        st.tuples(
            st.sampled_from(("next", "release", "renew", "result", "time", "withdraw")),
            st.integers(0, len(COLLECTORS) - 1),
            st.integers(0, 20),
        ),
        max_size=40,
    ),
)
def test_no_two_running_leases_ever_share_a_borrower(
    borrowers: list[str], steps: list[Step]
) -> None:
    tasks = {
        f"T{n}": a_task(
            f"T{n}", borrower_id=b, priority=10 * (n % 3), created_at=NOW + timedelta(seconds=n)
        )
        for n, b in enumerate(borrowers)
    }
    now = NOW
    for op, who, arg in steps:
        collector = COLLECTORS[who]
        task_id = f"T{arg % len(borrowers)}"
        try:
            match op:
                case "next":
                    pick = t.most_urgent(tasks.values(), "calls", now)
                    if pick is not None:
                        tasks[pick.task_id] = t.lease(
                            pick, collector, f"l{len(steps)}", now, POLICY
                        )
                case "release":
                    tasks[task_id] = t.release(tasks[task_id], collector, now)
                case "renew":
                    tasks[task_id] = t.renew(tasks[task_id], collector, now, POLICY)
                case "result":
                    t.check_holder(tasks[task_id], collector, now)
                    tasks[task_id] = t.finish(tasks[task_id], t.ResultCode.NO_ANSWER, now)
                case "withdraw":
                    if tasks[task_id].is_live:
                        tasks[task_id] = replace(
                            tasks[task_id], status=t.TaskStatus.WITHDRAWN, outcome="repaid"
                        )
                case "time":
                    now += timedelta(minutes=arg)
                    for back in t.expire(list(tasks.values()), now):
                        tasks[back.task_id] = back
        except t.TaskRefusedError:
            pass  # refused: nothing changed
        running = _running(tasks, now)
        assert len({x.borrower_id for x in running}) == len(running)
        assert all(x.collector is not None for x in running)
