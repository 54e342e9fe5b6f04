"""The workflow's app layer against in-memory fakes of its ports: REST commands are
idempotent by key, and a due timer fires once."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from collections_kit.clock import FixedClock
from collections_kit.testing import InMemoryUnitOfWork
from workflow.adapters.policy_file import load_queue_policy
from workflow.adapters.repository import BatchState
from workflow.app.commands import Commands, KeyReusedError, Outcome
from workflow.app.handlers import Workflow
from workflow.app.ports import CaseStore, DueTimer, KeptAnswer, QueueCount, TaskStep
from workflow.app.timers import TimerWorker
from workflow.app.work import Once, Worked, WorkQueues
from workflow.domain import messages as m
from workflow.domain import tasks as tk
from workflow.domain.decide import PERMIT_CHECK
from workflow.domain.measures import CaseHistory
from workflow.domain.model import Case, CaseStatus, ContactIntent, Hold, TimerKind
from workflow.domain.policy import PolicyBook

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
STAGE_LIMIT = timedelta(days=46)  # past the warning stage's 45-day limit
# Collectors of the Chinese desk: the queue policy gives calls-zh to the group zh-CN.
ZH_1 = tk.Worker("collector:1", frozenset({"zh-CN"}))
ZH_2 = tk.Worker("collector:2", frozenset({"zh-CN"}))


@dataclass
class Data:
    """What the database would hold."""

    cases: dict[str, Case] = field(default_factory=dict)  # by loan id
    intents: dict[str, ContactIntent] = field(default_factory=dict)
    timers: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, KeptAnswer] = field(default_factory=dict)
    key_claimed_at: dict[str, datetime] = field(default_factory=dict)
    tasks: dict[str, tk.Task] = field(default_factory=dict)
    task_steps: list[TaskStep] = field(default_factory=list)


@dataclass
class Database:
    data: Data = field(default_factory=Data)
    published: list[dict[str, Any]] = field(default_factory=list)  # the outbox
    commits: int = 0


class FakeCases:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def get(self, loan_id: str, *, lock: bool = False) -> Case | None:
        return self._data.cases.get(loan_id)

    async def load_for_batch(
        self, loan_ids: Sequence[str], check_ids: Sequence[str], intent_ids: Sequence[str]
    ) -> BatchState:
        state = BatchState({i: self._data.cases[i] for i in loan_ids if i in self._data.cases})
        case_ids = {c.case_id for c in state.cases.values()}
        for intent in self._data.intents.values():
            if intent.case_id in case_ids:
                state.intents.setdefault(intent.case_id, {})[intent.intent_id] = intent
        for timer_id, t in self._data.timers.items():
            if t["case_id"] in case_ids and t["fired_at"] is None:
                state.timers.setdefault(t["case_id"], {})[timer_id] = (
                    TimerKind(t["kind"]),
                    t["token"],
                    t["due_at"],
                )
        return state

    async def write_batch(self, state: BatchState, at: datetime) -> None:
        for case in state.changed_cases.values():
            self._data.cases[case.loan_id] = case
        self._data.intents.update(state.changed_intents)
        for row in state.new_timers:
            self._data.timers.setdefault(row["timer_id"], {**row, "fired_at": None})

    async def intents_of(self, case_id: str) -> list[ContactIntent]:
        return [i for i in self._data.intents.values() if i.case_id == case_id]

    async def contacts_made_during(self, case_id: str, hold: Hold) -> list[dict[str, Any]]:
        return []

    async def prune_money_seen(self, before: datetime, *, limit: int = 10_000) -> int:
        return 0

    async def histories(
        self, start: datetime, end: datetime, *, after: str = "", limit: int | None = None
    ) -> list[CaseHistory]:
        return []


class FakeIdempotencyKeys:
    def __init__(self, data: Data, now: datetime) -> None:
        self._data, self._now = data, now

    async def claim(self, key: str, request_hash: str) -> bool:
        if key in self._data.keys:
            return False
        self._data.keys[key] = KeptAnswer(request_hash, 0, {})
        self._data.key_claimed_at[key] = self._now
        return True

    async def kept(self, key: str) -> KeptAnswer:
        return self._data.keys[key]

    async def keep(self, key: str, status: int, body: dict[str, Any]) -> None:
        self._data.keys[key] = KeptAnswer(self._data.keys[key].request_hash, status, body)

    async def prune(self, before: datetime, *, limit: int = 10_000) -> int:
        old = sorted((at, key) for key, at in self._data.key_claimed_at.items() if at < before)[
            :limit
        ]
        for _, key in old:
            del self._data.keys[key], self._data.key_claimed_at[key]
        return len(old)


class FakeTimers:
    def __init__(self, data: Data) -> None:
        self._data = data

    def _unfired(self) -> list[dict[str, Any]]:
        return sorted(
            (t for t in self._data.timers.values() if t["fired_at"] is None),
            key=lambda t: t["due_at"],
        )

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        return [(t["timer_id"], t["loan_id"]) for t in self._unfired() if t["due_at"] <= now][
            :limit
        ]

    async def lock_unfired(self, timer_id: str) -> DueTimer | None:
        t = self._data.timers.get(timer_id)
        if t is None or t["fired_at"] is not None:
            return None
        return DueTimer(t["timer_id"], t["loan_id"], t["kind"], t["token"], t["due_at"])

    async def mark_fired(self, timer_id: str, at: datetime) -> None:
        self._data.timers[timer_id]["fired_at"] = at

    async def next_due(self) -> datetime | None:
        unfired = self._unfired()
        return unfired[0]["due_at"] if unfired else None

    async def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        late = [t["due_at"] for t in self._unfired() if t["due_at"] <= now]
        return len(late), min(late, default=None)


class FakeTasks:
    """The tasks port in memory; "next" picks by the domain's own rule."""

    def __init__(self, data: Data) -> None:
        self._data = data

    async def get(self, task_id: str, *, lock: bool = False) -> tk.Task | None:
        return self._data.tasks.get(task_id)

    async def add(self, tasks: Sequence[tk.Task]) -> list[tk.Task]:
        live = {(x.case_id, x.kind) for x in self._data.tasks.values() if x.is_live}
        added = [
            x
            for x in tasks
            if x.task_id not in self._data.tasks and (x.case_id, x.kind) not in live
        ]
        self._data.tasks.update({x.task_id: x for x in added})
        return added

    async def withdraw(
        self, withdrawals: Sequence[tuple[str, tk.Withdrawal]], at: datetime
    ) -> list[tk.Task]:
        ended = []
        for case_id, w in withdrawals:
            for x in list(self._data.tasks.values()):
                if x.case_id == case_id and x.is_live and (w.kinds is None or x.kind in w.kinds):
                    gone = replace(x, status=tk.TaskStatus.WITHDRAWN, outcome=w.reason, ended_at=at)
                    self._data.tasks[x.task_id] = gone
                    ended.append(gone)
        return ended

    async def save(self, tasks: Sequence[tk.Task]) -> None:
        self._data.tasks.update({x.task_id: x for x in tasks})

    async def leases_run_out(self, now: datetime, limit: int) -> list[tk.Task]:
        return [x for x in self._data.tasks.values() if x.lease_expired(now)][:limit]

    async def candidates(self, queue: str, limit: int) -> list[tk.Task]:
        pick = tk.most_urgent(self._data.tasks.values(), queue, START)
        return [pick] if pick else []

    async def lock_open(self, task_id: str) -> tk.Task | None:
        task = self._data.tasks.get(task_id)
        return task if task is not None and task.status is tk.TaskStatus.OPEN else None

    async def claim_borrower(self, borrower_id: str) -> bool:
        return True

    async def take(self, task: tk.Task) -> bool:
        await self.save([task])
        return True

    async def record(
        self, steps: Sequence[TaskStep], *, at: datetime, actor: str, policy_version: str
    ) -> None:
        self._data.task_steps.extend(steps)

    async def counts(self, now: datetime) -> list[QueueCount]:
        return []


class FakeUnitOfWork(InMemoryUnitOfWork[Database]):
    source = "workflow"

    def bind(self, work: Data) -> None:
        self.cases = FakeCases(work)
        self.idempotency_keys = FakeIdempotencyKeys(work, self.tx.now)
        self.timers = FakeTimers(work)
        self.tasks = FakeTasks(work)

    async def commit(self) -> None:
        await super().commit()
        self._db.commits += 1


@dataclass
class App:
    db: Database
    clock: FixedClock
    workflow: Workflow

    def uow(self, *, actor: str = "system") -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db, self.clock, actor)

    def topics(self) -> list[str]:
        return [row["topic"] for row in self.db.published]


@pytest.fixture
def app() -> App:
    return App(Database(), FixedClock(START), Workflow(PolicyBook()))


async def open_case(app: App, loan_id: str = "L1") -> Case:
    async with app.uow() as uow:
        await app.workflow.run(
            uow.tx,
            loan_id,
            m.OverdueReported(
                "e-overdue",
                loan_id,
                "B1",
                "consumer-loan",
                "CNY",
                Decimal("100.00"),
                Decimal("1000.00"),
                5,
                uow.now,
                "Asia/Shanghai",
                "CN",
            ),
            "e-overdue",
            cases=uow.cases,
        )
        await uow.commit()
    return app.db.data.cases[loan_id]


async def render(outcome: Outcome, cases: CaseStore) -> dict[str, Any]:
    if outcome.case is None:
        return {"problem": outcome.problem}
    return {
        "status": outcome.case.status.value,
        "intents": len(await cases.intents_of(outcome.case.case_id)),
    }


def hold(reason: str) -> dict[str, Any]:
    return {
        "loan_id": "L1",
        "route": "/v1/cases/L1/hold",
        "body": {"kind": "hardship", "reason": reason},
        "actor": "agent:1",
        "make": lambda request_id: m.RequestHold(request_id, "hardship", reason, "agent:1"),
        "render": render,
    }


async def test_a_command_retried_with_its_key_and_body_replays_the_answer(app: App) -> None:
    await open_case(app)
    commands = Commands(app.uow, app.workflow)
    first = await commands.handle(key="k-0001", **hold("hospital"))
    published, commits = len(app.db.published), app.db.commits
    again = await commands.handle(key="k-0001", **hold("hospital"))
    assert first[0] == 200
    assert first[1]["status"] == CaseStatus.HELD.value
    assert again == first
    assert len(app.db.published) == published  # nothing decided or published twice
    assert app.db.commits == commits  # the replay changed nothing


async def test_a_key_is_forgotten_with_its_answer_past_the_retention(app: App) -> None:
    """The timer worker prunes keys older than the retention (30 days by default) with the
    money seen, a minute apart at most; a younger key still replays its answer."""
    await open_case(app)
    commands = Commands(app.uow, app.workflow)
    first = await commands.handle(key="k-0001", **hold("hospital"))
    app.clock.set(app.clock.now() + timedelta(days=20))
    await commands.handle(key="k-0002", **hold("hospital"))
    worker = TimerWorker(app.uow, app.clock, app.workflow)
    assert await worker.prune_expired(every_s=0) == 0
    app.clock.set(app.clock.now() + timedelta(days=10, seconds=1))
    assert await worker.prune_expired(every_s=0) == 1
    assert set(app.db.data.keys) == {"k-0002"}
    assert await worker.prune_expired(every_s=0) == 0
    # Forgotten: the same key and body is a new request, decided afresh (already held).
    again = await commands.handle(key="k-0001", **hold("hospital"))
    assert again != first


async def test_a_key_reused_for_another_request_is_refused_and_changes_nothing(
    app: App,
) -> None:
    await open_case(app)
    commands = Commands(app.uow, app.workflow)
    await commands.handle(key="k-0001", **hold("hospital"))
    before = copy.deepcopy(app.db.data)
    with pytest.raises(KeyReusedError):
        await commands.handle(key="k-0001", **hold("another reason"))
    assert app.db.data == before


async def test_a_command_for_a_loan_without_a_case_is_kept_as_a_404(app: App) -> None:
    commands = Commands(app.uow, app.workflow)
    status, body = await commands.handle(key="k-0002", **hold("hospital"))
    assert status == 404
    assert "L1" in body["problem"]
    assert app.db.data.keys["k-0002"].status == 404  # a retry gets the same answer


async def test_a_due_timer_fires_once_and_is_marked_fired(app: App) -> None:
    case = await open_case(app)
    limits = [
        t for t in app.db.data.timers.values() if t["kind"] == TimerKind.STAGE_TIME_LIMIT.value
    ]
    assert len(limits) == 1
    worker = TimerWorker(app.uow, app.clock, app.workflow)
    assert await worker.fire_due() == 0  # not due yet
    app.clock.set(START + STAGE_LIMIT)
    published = len(app.db.published)
    assert await worker.fire_due() == 1
    assert await worker.fire_due() == 0  # fired once
    assert app.db.data.timers[limits[0]["timer_id"]]["fired_at"] == app.clock.now()
    escalated = app.db.data.cases[case.loan_id]
    assert escalated.stage != case.stage
    assert "collections.case-events.v1" in app.topics()[published:]


async def test_a_hold_withdraws_the_case_tasks_in_its_transaction_a_leased_one_included(
    app: App,
) -> None:
    case = await open_case(app)
    queues = load_queue_policy()
    task = tk.new_task(
        tk.NewTask(tk.TaskKind.CALL_AFTER_FORMAL_NOTICE, "entered formal_notice"),
        case,
        queues,
        START,
        lambda label: f"id-{label}",
    )
    app.db.data.tasks[task.task_id] = tk.lease(task, "collector:1", "lease-1", START, queues)
    status, _ = await Commands(app.uow, app.workflow).handle(key="k-0003", **hold("hospital"))
    assert status == 200
    withdrawn = app.db.data.tasks[task.task_id]
    assert (withdrawn.status, withdrawn.outcome) == (tk.TaskStatus.WITHDRAWN, "held")
    assert [(s.kind, s.detail["collector"]) for s in app.db.data.task_steps] == [
        ("task_withdrawn", "collector:1")
    ]


async def test_an_escalation_into_formal_notice_queues_a_call(app: App) -> None:
    await open_case(app)
    flow = Workflow(PolicyBook(), queues=load_queue_policy())
    status, _ = await Commands(app.uow, flow).handle(
        key="k-0004",
        loan_id="L1",
        route="/v1/cases/L1/escalations",
        body={"kind": "manual"},
        actor="agent:1",
        make=lambda rid: m.RequestEscalation(rid, "manual", "no reply", "agent:1"),
        render=render,
    )
    assert status == 200
    (task,) = app.db.data.tasks.values()
    assert (task.kind, task.queue, task.status) == (
        tk.TaskKind.CALL_AFTER_FORMAL_NOTICE,
        "calls-zh",  # a Chinese case: worked in Chinese
        tk.TaskStatus.OPEN,
    )
    assert [s.kind for s in app.db.data.task_steps] == ["task_created"]


async def test_a_collector_leases_a_task_and_its_promise_becomes_an_arrangement(
    app: App,
) -> None:
    case = await open_case(app)
    queues = load_queue_policy()
    task = tk.new_task(
        tk.NewTask(tk.TaskKind.CALL_AFTER_FORMAL_NOTICE, "entered formal_notice"),
        case,
        queues,
        START,
        lambda label: f"id-{label}",
    )
    app.db.data.tasks[task.task_id] = task
    work = WorkQueues(app.uow, app.workflow, queues)
    leased = await work.next(task.queue, ZH_1)
    assert isinstance(leased, tk.Task)
    assert (leased.task_id, leased.collector) == (task.task_id, "collector:1")
    assert await work.next(task.queue, ZH_2) is None  # the borrower is being worked

    before = copy.deepcopy(app.db.data)
    with pytest.raises(tk.TaskRefusedError, match="already past"):
        await work.result(
            task.task_id,
            ZH_1,
            tk.ResultCode.PROMISE_TO_PAY,
            tk.Action.OUTBOUND_CALL,
            promise=tk.Promise(Decimal("100"), START - timedelta(days=1)),
        )
    assert app.db.data == before  # refused by the case: nothing changed

    worked = await work.result(
        task.task_id,
        ZH_1,
        tk.ResultCode.PROMISE_TO_PAY,
        tk.Action.OUTBOUND_CALL,
        promise=tk.Promise(Decimal("100"), START + timedelta(days=3)),
    )
    assert isinstance(worked, Worked)
    assert worked.task.status is tk.TaskStatus.DONE
    arrangement = app.db.data.cases["L1"].arrangement
    assert arrangement is not None
    assert arrangement.total == Decimal("100")
    assert [s.kind for s in app.db.data.task_steps if s.kind.startswith("task_")] == [
        "task_leased",
        "task_result_recorded",
    ]


def a_call_task(app: App, case: Case) -> tk.Task:
    """The call after the formal notice of ``case`` (a Chinese case: queue calls-zh)."""
    task = tk.new_task(
        tk.NewTask(tk.TaskKind.CALL_AFTER_FORMAL_NOTICE, "entered formal_notice"),
        case,
        load_queue_policy(),
        START,
        lambda label: f"id-{label}",
    )
    app.db.data.tasks[task.task_id] = task
    return task


async def test_a_collector_outside_the_queues_groups_is_refused_and_nothing_changes(
    app: App,
) -> None:
    task = a_call_task(app, await open_case(app))
    work = WorkQueues(app.uow, app.workflow, load_queue_policy())
    outsider = tk.Worker("collector:9", frozenset({"legal"}))
    before = copy.deepcopy(app.db.data)
    with pytest.raises(tk.TaskRefusedError) as refused:
        await work.next("calls-zh", outsider)
    assert refused.value.status == 403
    assert "calls-zh" in refused.value.detail
    assert "group zh-CN" in refused.value.detail

    # A task of that queue, even one the outsider somehow holds, is refused the same way.
    leased = await work.next("calls-zh", ZH_1)
    assert isinstance(leased, tk.Task)
    app.db.data.tasks[task.task_id] = replace(leased, collector="collector:9")
    before = copy.deepcopy(app.db.data)
    for attempt in (
        work.renew(task.task_id, outsider),
        work.release(task.task_id, outsider),
        work.result(task.task_id, outsider, tk.ResultCode.NO_ANSWER, tk.Action.OUTBOUND_CALL),
    ):
        with pytest.raises(tk.TaskRefusedError) as refused:
            await attempt
        assert (refused.value.status, refused.value.title) == (403, "Queue not assigned")
    assert app.db.data == before
    # Named by subject, a collector works the queue without the group.
    named = replace(
        load_queue_policy(),
        access={"calls-zh": tk.QueueAccess(collectors=frozenset({"collector:9"}))},
    )
    named.check_may_work("calls-zh", tk.Worker("collector:9"))


async def test_a_retried_next_gets_the_same_task_not_a_second_lease(app: App) -> None:
    case = await open_case(app)
    first_task = a_call_task(app, case)
    work = WorkQueues(app.uow, app.workflow, load_queue_policy())

    def answer(task: tk.Task | None) -> tuple[int, dict[str, Any]]:
        return (204, {}) if task is None else (200, {"task_id": task.task_id})

    once = Once("key-next-0001", {"route": "/v1/queues/calls-zh/next", "body": None}, answer)
    leased = await work.next("calls-zh", ZH_1, once=once)
    assert isinstance(leased, tk.Task)
    # Released, so a second lease would be possible: the retry still gets the first answer.
    await work.release(leased.task_id, ZH_1)
    steps = len(app.db.data.task_steps)
    again = await work.next("calls-zh", ZH_1, once=once)
    assert isinstance(again, KeptAnswer)
    assert (again.status, again.body) == (200, {"task_id": first_task.task_id})
    assert len(app.db.data.task_steps) == steps
    assert app.db.data.tasks[first_task.task_id].status is tk.TaskStatus.OPEN
    # The same key for another request, or from another collector: refused.
    with pytest.raises(KeyReusedError):
        await work.next(
            "calls", ZH_1, once=replace(once, request={"route": "/v1/queues/calls/next"})
        )
    with pytest.raises(KeyReusedError):
        await work.next("calls-zh", ZH_2, once=once)


async def test_a_refused_request_does_not_keep_its_key(app: App) -> None:
    task = a_call_task(app, await open_case(app))
    work = WorkQueues(app.uow, app.workflow, load_queue_policy())
    once: Once[tk.Task] = Once("key-renew-001", {"route": "renew"}, lambda _: (200, {}))
    with pytest.raises(tk.TaskRefusedError, match="do not hold"):
        await work.renew(task.task_id, ZH_1, once=once)
    assert "key-renew-001" not in app.db.data.keys


async def test_the_sweeper_returns_a_lease_that_ran_out_once(app: App) -> None:
    task = a_call_task(app, await open_case(app))
    policy = load_queue_policy()
    work = WorkQueues(app.uow, app.workflow, policy)
    leased = await work.next("calls-zh", ZH_1)
    assert isinstance(leased, tk.Task)
    assert await work.return_run_out() == 0  # still running
    app.clock.set(START + policy.lease)
    assert await work.return_run_out() == 1
    assert await work.return_run_out() == 0
    assert app.db.data.tasks[task.task_id].status is tk.TaskStatus.OPEN
    # A "next" after the sweep leases it again without a second expiry.
    assert isinstance(await work.next("calls-zh", ZH_2), tk.Task)
    expired = [s for s in app.db.data.task_steps if s.kind == "task_lease_expired"]
    assert [(s.detail["collector"], s.detail["lease_id"]) for s in expired] == [
        ("collector:1", leased.lease_id)
    ]


async def test_a_lease_and_a_renewal_ask_ledger_sync_to_confirm_the_balance_again(
    app: App,
) -> None:
    """The collector's contact permits rest on a ledger confirmation still valid: leasing
    (and renewing) a task asks for a fresh one, with the contact commands' balance check."""
    case = await open_case(app)
    task = a_call_task(app, case)
    work = WorkQueues(app.uow, app.workflow, load_queue_policy())
    published = len(app.db.published)
    leased = await work.next("calls-zh", ZH_1)
    assert isinstance(leased, tk.Task)
    await work.renew(task.task_id, ZH_1)
    asked = [
        json.loads(row["value"])
        for row in app.db.published[published:]
        if row["topic"] == "collections.balance-checks.v1"
    ]
    assert [a["loan_id"] for a in asked] == ["L1", "L1"]
    assert all(a["expected_outstanding"] == str(case.outstanding) for a in asked)
    checks = [a["check_id"] for a in asked]
    assert len(set(checks)) == 2
    assert all(c.startswith(PERMIT_CHECK) for c in checks)
    steps = [s for s in app.db.data.task_steps if s.kind == "balance_check_requested"]
    assert [s.detail["check_id"] for s in steps] == checks
    # Nothing else of the case changed: a lease is not a case input.
    assert app.db.data.cases["L1"] == case
