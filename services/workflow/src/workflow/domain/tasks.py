"""Work for people: tasks, their queues, leases and results. Pure: no clock, no I/O.

A case that needs a person becomes a *task* (a call after the formal notice, a broken
promise to follow up, a negotiation, a guarantor to contact, a legal review). Which queue
it joins and how urgent it is come from the queue policy (data, ``policies/queues.toml``),
never from code. A collector asking a queue for *next* leases its most urgent task for a
while; nobody else works that borrower meanwhile (the database enforces one leased task per
borrower, across all their loans). A lease that runs out returns the task to its queue.

A result acts on the case through the inputs the engine already decides (an arrangement,
a hold, a contact outcome): the rules for those live once, in ``decide``. Repayment in full,
a hold or a closure withdraws the case's live tasks in the transaction that applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from workflow.domain import messages as m
from workflow.domain.model import Case, CaseStatus, TimelineEntry
from workflow.domain.policy import Stage


class TaskKind(StrEnum):
    CALL_AFTER_FORMAL_NOTICE = "call_after_formal_notice"
    BROKEN_PROMISE_FOLLOW_UP = "broken_promise_follow_up"
    NEGOTIATION = "negotiation"
    GUARANTOR_CONTACT = "guarantor_contact"
    LEGAL_REVIEW = "legal_review"


class TaskStatus(StrEnum):
    OPEN = "open"
    LEASED = "leased"
    DONE = "done"
    WITHDRAWN = "withdrawn"


LIVE = (TaskStatus.OPEN, TaskStatus.LEASED)


class Action(StrEnum):
    """What the collector did."""

    OUTBOUND_CALL = "outbound_call"
    INBOUND_CALL = "inbound_call"
    SMS = "sms"


class ResultCode(StrEnum):
    """What came of it (the industry's standard result codes)."""

    RIGHT_PARTY_CONTACT = "right_party_contact"
    PROMISE_TO_PAY = "promise_to_pay"
    REFUSED_TO_PAY = "refused_to_pay"
    REFUSED_TO_COMMUNICATE = "refused_to_communicate"
    WRONG_NUMBER = "wrong_number"
    NO_ANSWER = "no_answer"
    DISPUTE_RAISED = "dispute_raised"
    HARDSHIP_DECLARED = "hardship_declared"


@dataclass(frozen=True)
class Task:
    task_id: str
    case_id: str
    loan_id: str
    borrower_id: str
    kind: TaskKind
    queue: str
    priority: int  # lower is more urgent
    status: TaskStatus
    reason: str  # the situation that made it
    created_at: datetime
    collector: str | None = None
    lease_id: str | None = None
    leased_at: datetime | None = None
    lease_until: datetime | None = None
    renewals: int = 0
    ended_at: datetime | None = None
    # The result code (done) or why it was withdrawn (withdrawn).
    outcome: str | None = None

    @property
    def is_live(self) -> bool:
        return self.status in LIVE

    def lease_expired(self, now: datetime) -> bool:
        return (
            self.status is TaskStatus.LEASED
            and self.lease_until is not None
            and self.lease_until <= now
        )


# --- the queue policy: data --------------------------------------------------------------


@dataclass(frozen=True)
class BalanceBand:
    name: str
    # Outstanding strictly below this falls in the band (None: no upper bound).
    below: Decimal | None


@dataclass(frozen=True)
class Route:
    """Tasks matching every condition given (an empty condition matches anything) go to
    ``queue`` with ``priority``. Routes are tried in order; the first that matches wins."""

    queue: str
    priority: int
    kinds: frozenset[TaskKind] = frozenset()
    stages: frozenset[Stage] = frozenset()
    jurisdictions: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    bands: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    # True: only cases whose last promise was broken; False: only those whose was not.
    broken_promise: bool | None = None

    def matches(self, facts: RoutingFacts) -> bool:
        return (
            (not self.kinds or facts.kind in self.kinds)
            and (not self.stages or facts.stage in self.stages)
            and (not self.jurisdictions or facts.jurisdiction in self.jurisdictions)
            and (not self.products or facts.product in self.products)
            and (not self.bands or facts.band in self.bands)
            and (not self.languages or facts.language in self.languages)
            and (self.broken_promise is None or facts.broken_promise is self.broken_promise)
        )

    @property
    def catches_all_of_its_kinds(self) -> bool:
        return not (
            self.stages
            or self.jurisdictions
            or self.products
            or self.bands
            or self.languages
            or self.broken_promise is not None
        )


@dataclass(frozen=True)
class RoutingFacts:
    kind: TaskKind
    stage: Stage
    jurisdiction: str
    product: str
    band: str
    language: str
    broken_promise: bool


@dataclass(frozen=True)
class Worker:
    """Who asks for work: the collector (the token's subject) and the groups the token
    carries (their team, language desk, legal staff)."""

    collector: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QueueAccess:
    """Who may work one queue: anyone who works queues, or only the collectors named and
    the members of the groups named."""

    anyone: bool = False
    collectors: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def admits(self, worker: Worker) -> bool:
        return (
            self.anyone
            or worker.collector in self.collectors
            or not self.groups.isdisjoint(worker.groups)
        )

    def describe(self) -> str:
        if self.anyone:
            return "anyone who works queues"
        named = [f"group {g}" for g in sorted(self.groups)]
        named += [f"collector {c}" for c in sorted(self.collectors)]
        return ", ".join(named) if named else "nobody"


@dataclass(frozen=True)
class QueuePolicy:
    version: str
    routes: tuple[Route, ...]
    bands: tuple[BalanceBand, ...]
    # The language a case is worked in, by jurisdiction: the borrower's own preference is
    # personal data the notifier keeps, and the workflow holds none.
    languages: dict[str, str] = field(default_factory=dict)
    default_language: str = "en"
    lease: timedelta = timedelta(minutes=15)
    # How many times a lease may be renewed before the task must go back or get a result.
    max_renewals: int = 4
    # Who may work each queue. A queue without an entry is worked by nobody: the loader
    # refuses such a policy, so a new queue is never opened to everyone by omission.
    access: dict[str, QueueAccess] = field(default_factory=dict)

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.queue for r in self.routes))

    def check_may_work(self, queue: str, worker: Worker) -> None:
        """Refuse (403) unless the queue policy lets ``worker`` work ``queue``."""
        access = self.access.get(queue, QueueAccess())
        if not access.admits(worker):
            raise TaskRefusedError(
                403,
                "Queue not assigned",
                f"{worker.collector} may not work the queue {queue}: it is worked by "
                f"{access.describe()} (queue policy {self.version}).",
            )

    def band_of(self, outstanding: Decimal) -> str:
        for band in self.bands:
            if band.below is None or outstanding < band.below:
                return band.name
        return self.bands[-1].name if self.bands else ""

    def facts(self, kind: TaskKind, case: Case) -> RoutingFacts:
        last = case.last_arrangement
        return RoutingFacts(
            kind=kind,
            stage=case.stage,
            jurisdiction=case.jurisdiction,
            product=case.product,
            band=self.band_of(case.outstanding),
            language=self.languages.get(case.jurisdiction, self.default_language),
            broken_promise=last is not None and last.outcome == "broken",
        )

    def route(self, kind: TaskKind, case: Case) -> Route:
        facts = self.facts(kind, case)
        for route in self.routes:
            if route.matches(facts):
                return route
        # The loader refuses a policy without a catch-all route for every kind.
        raise LookupError(f"no route for {kind}")


def policy_problems(policy: QueuePolicy) -> list[str]:
    """What makes a queue policy unusable (the service refuses to start with it)."""
    problems = []
    for kind in TaskKind:
        if not any(
            kind in r.kinds or not r.kinds for r in policy.routes if r.catches_all_of_its_kinds
        ):
            problems.append(f"no route catches every {kind} task")
    if policy.lease <= timedelta(0):
        problems.append("the lease must be positive")
    if policy.max_renewals < 0:
        problems.append("max_renewals must not be negative")
    names = [b.name for b in policy.bands]
    if len(set(names)) != len(names):
        problems.append("balance band names must be unique")
    uppers = [b.below for b in policy.bands]
    if any(u is None for u in uppers[:-1]):
        problems.append("only the last balance band may be open-ended")
    bounded = [u for u in uppers if u is not None]
    if bounded != sorted(bounded):
        problems.append("balance bands must be listed in increasing order")
    for route in policy.routes:
        unknown = route.bands - set(names)
        if unknown:
            problems.append(f"route to {route.queue} names unknown bands {sorted(unknown)}")
    for queue in policy.queues:
        if queue not in policy.access:
            problems.append(f"no access entry says who may work the queue {queue}")
    for queue, access in policy.access.items():
        if queue not in policy.queues:
            # A misspelt queue name would leave the real queue closed, or this one unused.
            problems.append(f"access names the queue {queue}, which no route fills")
        if access.anyone and (access.collectors or access.groups):
            problems.append(f"access to {queue}: anyone, or collectors and groups, not both")
    return problems


# --- which situations make which task -------------------------------------------------------

# The stage whose work each stage-bound kind is: a case that leaves the stage no longer needs it.
STAGE_OF_KIND: dict[TaskKind, Stage] = {
    TaskKind.CALL_AFTER_FORMAL_NOTICE: Stage.FORMAL_NOTICE,
    TaskKind.GUARANTOR_CONTACT: Stage.GUARANTOR_RECOURSE,
    TaskKind.LEGAL_REVIEW: Stage.LITIGATION,
}
_KIND_FOR_STAGE = {stage: kind for kind, stage in STAGE_OF_KIND.items()}


@dataclass(frozen=True)
class NewTask:
    kind: TaskKind
    reason: str


@dataclass(frozen=True)
class Withdrawal:
    reason: str
    # None: every live task of the case.
    kinds: frozenset[TaskKind] | None = None


@dataclass(frozen=True)
class TaskChanges:
    """What one decision does to a case's tasks: withdraw these, then create those."""

    case: Case | None = None
    withdraw: tuple[Withdrawal, ...] = ()
    create: tuple[NewTask, ...] = ()
    # What made them (the decision's cause), for the timeline and the new tasks' ids.
    cause: str = ""

    @property
    def empty(self) -> bool:
        return not (self.withdraw or self.create)


def changes_for(
    before: Case | None, after: Case | None, timeline: Sequence[TimelineEntry]
) -> TaskChanges:
    """The task work a decision made or ended, read off its case and timeline entries."""
    if before is None or after is None:
        return TaskChanges()
    withdraw: list[Withdrawal] = []
    create: list[NewTask] = []
    if after.status is not before.status and after.status is not CaseStatus.OPEN:
        # Repaid, settled, closed or held: nobody may call about this case any more, a
        # collector holding its task included.
        reason = after.exit.value if after.exit is not None else "held"
        return TaskChanges(after, (Withdrawal(reason),))
    for entry in timeline:
        match entry.kind:
            case "stage_changed" if entry.stage_after is not None:
                stale = frozenset(k for k, s in STAGE_OF_KIND.items() if s is not entry.stage_after)
                withdraw.append(Withdrawal("superseded_by_stage_change", stale))
                kind = _KIND_FOR_STAGE.get(entry.stage_after)
                if kind is not None:
                    create.append(NewTask(kind, f"entered {entry.stage_after.value}"))
            case "arrangement_broken":
                create.append(NewTask(TaskKind.BROKEN_PROMISE_FOLLOW_UP, "promise broken"))
            case "arrangement_recorded":
                # The borrower agreed terms: chasing them for it again is no longer the work.
                withdraw.append(
                    Withdrawal(
                        "superseded_by_arrangement",
                        frozenset({TaskKind.BROKEN_PROMISE_FOLLOW_UP, TaskKind.NEGOTIATION}),
                    )
                )
    if after.status is not CaseStatus.OPEN:
        create.clear()
    return TaskChanges(after, tuple(withdraw), tuple(create))


def new_task(
    change: NewTask, case: Case, policy: QueuePolicy, now: datetime, new_id: Callable[[str], str]
) -> Task:
    route = policy.route(change.kind, case)
    return Task(
        task_id=new_id(f"task/{change.kind}"),
        case_id=case.case_id,
        loan_id=case.loan_id,
        borrower_id=case.borrower_id,
        kind=change.kind,
        queue=route.queue,
        priority=route.priority,
        status=TaskStatus.OPEN,
        reason=change.reason,
        created_at=now,
    )


# --- leases ------------------------------------------------------------------------------------


class TaskRefusedError(Exception):
    """A collector's request about a task that the rules refuse; nothing changes."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def most_urgent(tasks: Iterable[Task], queue: str, now: datetime) -> Task | None:
    """The task "next" leases from ``queue``: the most urgent (then oldest) waiting task
    whose borrower nobody is working. A lease that ran out waits again. (The adapter asks
    the database the same question; this is the rule it answers.)"""
    pool = list(tasks)
    busy = {
        x.borrower_id for x in pool if x.status is TaskStatus.LEASED and not x.lease_expired(now)
    }
    waiting = [
        x
        for x in pool
        if x.queue == queue
        and (x.status is TaskStatus.OPEN or x.lease_expired(now))
        and x.borrower_id not in busy
    ]
    return min(waiting, key=lambda x: (x.priority, x.created_at, x.task_id), default=None)


def lease(task: Task, collector: str, lease_id: str, now: datetime, policy: QueuePolicy) -> Task:
    assert task.status is TaskStatus.OPEN or task.lease_expired(now)
    return replace(
        task,
        status=TaskStatus.LEASED,
        collector=collector,
        lease_id=lease_id,
        leased_at=now,
        lease_until=now + policy.lease,
        renewals=0,
    )


def returned(task: Task) -> Task:
    """Back in its queue, for anyone: after a release or an expired lease."""
    return replace(
        task,
        status=TaskStatus.OPEN,
        collector=None,
        lease_id=None,
        leased_at=None,
        lease_until=None,
        renewals=0,
    )


def check_holder(task: Task, collector: str, now: datetime) -> None:
    """Refuse unless ``collector`` holds a running lease on ``task``."""
    if task.status is TaskStatus.WITHDRAWN:
        raise TaskRefusedError(
            409,
            "Task withdrawn",
            f"The task was withdrawn ({task.outcome}): do not contact the borrower about it.",
        )
    if task.status is TaskStatus.DONE:
        raise TaskRefusedError(
            409, "Task already worked", f"The task already has a result ({task.outcome})."
        )
    if task.status is not TaskStatus.LEASED or task.collector != collector:
        raise TaskRefusedError(
            409, "Task not held", "You do not hold this task: ask the queue for next."
        )
    if task.lease_expired(now):
        assert task.lease_until is not None
        raise TaskRefusedError(
            409,
            "Lease expired",
            f"Your lease ran out at {task.lease_until.isoformat()}; "
            "the task went back to its queue.",
        )


def renew(task: Task, collector: str, now: datetime, policy: QueuePolicy) -> Task:
    check_holder(task, collector, now)
    if task.renewals >= policy.max_renewals:
        raise TaskRefusedError(
            409,
            "Renewal limit reached",
            f"A lease may be renewed {policy.max_renewals} times: record a result or release it.",
        )
    return replace(task, lease_until=now + policy.lease, renewals=task.renewals + 1)


def release(task: Task, collector: str, now: datetime) -> Task:
    check_holder(task, collector, now)
    return returned(task)


def expire(tasks: Sequence[Task], now: datetime) -> list[Task]:
    """The leased tasks among ``tasks`` whose lease ran out, returned to their queue."""
    return [returned(t) for t in tasks if t.lease_expired(now)]


def finish(task: Task, result: ResultCode, now: datetime) -> Task:
    return replace(task, status=TaskStatus.DONE, outcome=result.value, ended_at=now)


# --- results act on the case through the engine's own inputs ----------------------------------


@dataclass(frozen=True)
class Promise:
    amount: Decimal
    due_at: datetime


@dataclass(frozen=True)
class ResultEffect:
    # The input ``decide`` applies to the case (None: the result is only recorded).
    input: m.RecordArrangement | m.RequestHold | m.ContactOutcomeReported | None
    # Work the result makes for someone next.
    follow_up: NewTask | None = None


def result_effect(
    task: Task,
    result: ResultCode,
    action: Action,
    *,
    collector: str,
    request_id: str,
    note: str,
    promise: Promise | None,
    occurred_at: datetime,
) -> ResultEffect:
    """What ``result`` does to the task's case, as the input the engine already decides.

    A promise is an arrangement and a dispute or hardship a hold, with the same checks as when
    recorded over REST; a refusal to communicate and an unanswered call count towards the
    refusal-to-communicate trigger exactly as the automated contacts' outcomes do; a
    right-party contact resets that count.
    """
    reason = note or f"{result.value} ({action.value}, task {task.task_id})"

    def outcome(value: str) -> m.ContactOutcomeReported:
        return m.ContactOutcomeReported(
            event_id=request_id,
            command_id="",
            intent_id="",
            channel="voice" if action is not Action.SMS else "sms",
            outcome=value,
            reason=result.value,
            occurred_at=occurred_at,
        )

    match result:
        case ResultCode.PROMISE_TO_PAY:
            if promise is None:
                raise TaskRefusedError(
                    422,
                    "Promise missing",
                    "A promise_to_pay result needs the promise: amount and due_at.",
                )
            return ResultEffect(
                m.RecordArrangement(
                    request_id=request_id,
                    kind="promise_to_pay",
                    schedule=(m.InstalmentTerms(promise.due_at, promise.amount),),
                    actor=collector,
                    note=note,
                )
            )
        case ResultCode.DISPUTE_RAISED:
            return ResultEffect(m.RequestHold(request_id, "dispute", reason, collector))
        case ResultCode.HARDSHIP_DECLARED:
            return ResultEffect(m.RequestHold(request_id, "hardship", reason, collector))
        case ResultCode.REFUSED_TO_COMMUNICATE:
            return ResultEffect(outcome("refused"))
        case ResultCode.NO_ANSWER:
            return ResultEffect(outcome("unanswered"))
        case ResultCode.RIGHT_PARTY_CONTACT:
            return ResultEffect(outcome("answered"))
        case ResultCode.REFUSED_TO_PAY:
            # Someone negotiates next; a refusal in negotiation is that negotiation's end
            # (escalation is a person's call, over the cases API).
            follow = (
                None
                if task.kind is TaskKind.NEGOTIATION
                else NewTask(TaskKind.NEGOTIATION, "refused to pay")
            )
            return ResultEffect(outcome("answered"), follow)
        case ResultCode.WRONG_NUMBER:
            return ResultEffect(None)
    raise AssertionError(f"unhandled result {result}")
