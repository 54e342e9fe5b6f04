"""The work queues' use cases: next, result, release, renew, and the queues' depths; and
the sweeper that returns leases that ran out.

Each is one unit of work; a refusal (:class:`~workflow.domain.tasks.TaskRefusedError`) leaves it
uncommitted, so nothing changes. The rules are the domain's (``domain/tasks.py``); this
only loads, applies them and saves. Who may work which queue is the queue policy's
(``access``), checked on every request about a queue or a task before anything else.

A request may carry an ``Idempotency-Key`` (:class:`Once`): the key is claimed in the
request's own transaction with the mechanism of the case commands (``app/commands.py``) and
keeps the answer, so a retried "next" gets the task its first attempt leased, not a second
lease. A refused request changes nothing, its key included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from collections_kit.clock import derived_id, new_id
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from workflow.app.commands import claim_or_replay, request_hash
from workflow.app.handlers import Workflow, balance_check
from workflow.app.ports import (
    KeptAnswer,
    QueueCount,
    StartUnitOfWork,
    TaskStep,
    TaskStore,
    WorkflowUnitOfWork,
)
from workflow.domain import decide as d
from workflow.domain import tasks as t

# How many candidates one "next" looks at: enough to step past borrowers other collectors
# are taking at the same moment.
_CANDIDATES = 20
# Leases that ran out are returned (by the sweeper, or a "next" that finds them first) a
# bounded number at a time.
_EXPIRE_BATCH = 200
# The actor of a lease's expiry on the timeline when the sweeper returns it.
LEASE_EXPIRY_ACTOR = "lease-sweeper"


@dataclass(frozen=True)
class QueueView:
    queue: str
    depth: int  # open tasks waiting
    leased: int
    oldest: datetime | None  # when the oldest waiting task was created
    by_kind: dict[str, int] = field(default_factory=dict)  # waiting, by kind


@dataclass(frozen=True)
class Worked:
    task: t.Task
    # The negotiation (say) the result asked for, if one was created.
    follow_up: t.Task | None = None


class UnknownQueueError(LookupError):
    pass


R = TypeVar("R")


@dataclass(frozen=True)
class Once(Generic[R]):
    """An Idempotency-Key on a task request: what it is claimed for (the route and body;
    the collector is added) and how the answer kept for its retries is made."""

    key: str
    request: dict[str, Any]
    answer: Callable[[R], tuple[int, dict[str, Any]]]


class WorkQueues:
    def __init__(self, uow: StartUnitOfWork, workflow: Workflow, policy: t.QueuePolicy) -> None:
        self._uow = uow
        self._workflow = workflow
        self._policy = policy

    def _known(self, queue: str) -> None:
        if queue not in self._policy.queues:
            raise UnknownQueueError(queue)

    async def _claim(
        self, uow: WorkflowUnitOfWork, worker: t.Worker, once: Once[Any] | None
    ) -> KeptAnswer | None:
        """Claim the request's key first, before anything is read: a retry is answered as
        its first attempt was, even when the task has moved on since (worked, released)."""
        if once is None:
            return None
        # The collector is part of the request: another caller reusing a key is refused,
        # never answered with the first caller's task.
        hashed = request_hash({**once.request, "actor": worker.collector})
        return await claim_or_replay(uow.idempotency_keys, once.key, hashed)

    async def _done(self, uow: WorkflowUnitOfWork, once: Once[R] | None, result: R) -> None:
        if once is not None:
            status, body = once.answer(result)
            await uow.idempotency_keys.keep(once.key, status, body)
        await uow.commit()

    async def next(
        self, queue: str, worker: t.Worker, *, once: Once[t.Task | None] | None = None
    ) -> t.Task | KeptAnswer | None:
        """Lease ``worker`` the most urgent task of ``queue`` whose borrower nobody is
        working (None: nothing to work; a :class:`KeptAnswer`: a retry, answered as before)."""
        self._known(queue)
        self._policy.check_may_work(queue, worker)
        collector = worker.collector
        async with self._uow(actor=collector) as uow:
            kept = await self._claim(uow, worker, once)
            if kept is not None:
                return kept
            await self._return_run_out(uow.tasks, uow.now, uow.tx.actor)
            leased = await self._lease(uow.tasks, queue, collector, uow.now)
            if leased is not None:
                await self._confirm_balance(uow, leased)
            # Committed either way: the leases it returned.
            await self._done(uow, once, leased)
            return leased

    async def _lease(
        self, store: TaskStore, queue: str, collector: str, now: datetime
    ) -> t.Task | None:
        for candidate in await store.candidates(queue, _CANDIDATES):
            if not await store.claim_borrower(candidate.borrower_id):
                continue  # another collector is taking this borrower right now
            task = await store.lock_open(candidate.task_id)
            if task is None:
                continue  # taken or withdrawn since the candidates were read
            leased = t.lease(task, collector, new_id(), now, self._policy)
            if not await store.take(leased):
                continue  # someone took the borrower since the candidates were read
            until = leased.lease_until.isoformat() if leased.lease_until else None
            await self._record(
                store,
                [
                    TaskStep(
                        leased,
                        "task_leased",
                        {"collector": collector, "lease_until": until},
                        f"lease:{leased.lease_id}",
                    )
                ],
                now,
                collector,
            )
            return leased
        return None

    async def _confirm_balance(self, uow: WorkflowUnitOfWork, task: t.Task) -> None:
        """Ask ledger-sync for a fresh confirmation of the task's loan, with the balance
        check every contact command waits for: the collector's contact permits (the
        notifier's) rest on one still valid, and the case's last command may be hours old.
        The answer reaches the notifier in about a second, the case's timeline with it."""
        case = await uow.cases.get(task.loan_id)
        if case is None or not case.is_open:
            return  # a held or closed case has no tasks to work (and no permits)
        cause = f"lease:{task.lease_id}:{task.renewals}"
        check_id = d.permit_check_id(cause)
        uow.tx.publish(
            balance_check(check_id, case, case.outstanding, uow.tx),
            event_id=derived_id(cause, "balance-check"),
            subject=case.loan_id,
        )
        await self._record(
            uow.tasks,
            [TaskStep(task, "balance_check_requested", {"check_id": check_id}, cause)],
            uow.now,
            uow.tx.actor,
        )

    async def return_run_out(self) -> int:
        """Return to their queues the leases that ran out (a batch of them), each with its
        ``task_lease_expired`` entry: the sweeper's round. How many it returned."""
        async with self._uow(actor=LEASE_EXPIRY_ACTOR) as uow:
            returned = await self._return_run_out(uow.tasks, uow.now, uow.tx.actor)
            await uow.commit()
        return returned

    async def _return_run_out(self, store: TaskStore, now: datetime, actor: str) -> int:
        # Locked SKIP LOCKED: the sweeper and a "next" never return the same lease both.
        run_out = [
            x for x in await store.leases_run_out(now, _EXPIRE_BATCH) if x.lease_expired(now)
        ]
        if not run_out:
            return 0
        await store.save(t.expire(run_out, now))
        # The lease's id makes the entry once per lease (migration 0011's unique index).
        await self._record(
            store,
            [
                TaskStep(
                    x,
                    "task_lease_expired",
                    {
                        "collector": x.collector,
                        "lease_id": x.lease_id,
                        "lease_until": x.lease_until.isoformat() if x.lease_until else None,
                    },
                    f"lease:{x.lease_id}",
                )
                for x in run_out
            ],
            now,
            actor,
        )
        return len(run_out)

    async def renew(
        self, task_id: str, worker: t.Worker, *, once: Once[t.Task] | None = None
    ) -> t.Task | KeptAnswer:
        collector = worker.collector
        async with self._uow(actor=collector) as uow:
            kept = await self._claim(uow, worker, once)
            if kept is not None:
                return kept
            task = await self._held(uow.tasks, task_id, worker)
            renewed = t.renew(task, collector, uow.now, self._policy)
            await uow.tasks.save([renewed])
            await self._confirm_balance(uow, renewed)
            until = renewed.lease_until.isoformat() if renewed.lease_until else None
            await self._record(
                uow.tasks,
                [
                    TaskStep(
                        renewed,
                        "task_lease_renewed",
                        {"collector": collector, "lease_until": until},
                        f"lease:{task.lease_id}",
                    )
                ],
                uow.now,
                collector,
            )
            await self._done(uow, once, renewed)
            return renewed

    async def release(
        self, task_id: str, worker: t.Worker, *, once: Once[t.Task] | None = None
    ) -> t.Task | KeptAnswer:
        collector = worker.collector
        async with self._uow(actor=collector) as uow:
            kept = await self._claim(uow, worker, once)
            if kept is not None:
                return kept
            task = await self._held(uow.tasks, task_id, worker)
            released = t.release(task, collector, uow.now)
            await uow.tasks.save([released])
            await self._record(
                uow.tasks,
                [
                    TaskStep(
                        released,
                        "task_released",
                        {"collector": collector},
                        f"lease:{task.lease_id}",
                    )
                ],
                uow.now,
                collector,
            )
            await self._done(uow, once, released)
            return released

    async def result(
        self,
        task_id: str,
        worker: t.Worker,
        result: t.ResultCode,
        action: t.Action,
        *,
        note: str = "",
        promise: t.Promise | None = None,
        once: Once[Worked] | None = None,
    ) -> Worked | KeptAnswer:
        """Record what came of the task and apply it to the case, in one transaction: a
        result the case's rules refuse (a promise dated in the past, say) changes nothing."""
        collector = worker.collector
        async with self._uow(actor=collector) as uow:
            kept = await self._claim(uow, worker, once)
            if kept is not None:
                return kept
            seen = await self._held(uow.tasks, task_id, worker, lock=False)
            # The case first, then its task: the order a consumed repayment locks them in
            # (the other order could deadlock with it).
            await uow.cases.get(seen.loan_id, lock=True)
            task = await self._held(uow.tasks, task_id, worker)
            t.check_holder(task, collector, uow.now)
            assert task.lease_id is not None
            request_id = f"task-result:{task.task_id}:{task.lease_id}"
            effect = t.result_effect(
                task,
                result,
                action,
                collector=collector,
                request_id=request_id,
                note=note,
                promise=promise,
                occurred_at=uow.now,
            )
            done = t.finish(task, result, uow.now)
            # Saved first: a hold or closure the result causes withdraws the case's other
            # live tasks, not this one, which has its result.
            await uow.tasks.save([done])
            cause = f"request:{request_id}"
            await self._record(
                uow.tasks,
                [
                    TaskStep(
                        done,
                        "task_result_recorded",
                        {
                            "collector": collector,
                            "action": action.value,
                            "result": result.value,
                            "note": note or None,
                        },
                        cause,
                    )
                ],
                uow.now,
                collector,
            )
            if effect.input is not None:
                _, decision = await self._workflow.run(
                    uow.tx,
                    task.loan_id,
                    effect.input,
                    request_id,
                    cases=uow.cases,
                    tasks=uow.tasks,
                )
                if decision.rejected is not None:
                    raise t.TaskRefusedError(409, "Result refused by the case", decision.rejected)
            follow_up = None
            if effect.follow_up is not None:
                case = await uow.cases.get(task.loan_id)
                if case is not None and case.is_open:
                    created = await self._workflow.apply_task_changes(
                        uow.tx,
                        uow.tasks,
                        [t.TaskChanges(case, create=(effect.follow_up,), cause=cause)],
                    )
                    follow_up = created[0] if created else None
            worked = Worked(done, follow_up)
            await self._done(uow, once, worked)
            return worked

    async def _held(
        self, store: TaskStore, task_id: str, worker: t.Worker, *, lock: bool = True
    ) -> t.Task:
        """The task, if it exists and its queue is one ``worker`` may work (404, 403)."""
        task = await store.get(task_id, lock=lock)
        if task is None:
            raise t.TaskRefusedError(404, "Task not found", f"No task {task_id}.")
        self._policy.check_may_work(task.queue, worker)
        return task

    async def _record(
        self, store: TaskStore, steps: list[TaskStep], at: datetime, actor: str
    ) -> None:
        await store.record(steps, at=at, actor=actor, policy_version=self._policy.version)

    async def queues(self) -> list[QueueView]:
        async with self._uow() as uow:
            counts = await uow.tasks.counts(uow.now)
        return [_view(q, counts) for q in self._policy.queues]

    async def queue(self, queue: str) -> QueueView:
        self._known(queue)
        async with self._uow() as uow:
            counts = await uow.tasks.counts(uow.now)
        return _view(queue, counts)


class LeaseSweeper(RunsOnAPollingWorker):
    """Returns leases that ran out to their queues as they run out, so the case timeline
    shows the lease expiring when it did (not when someone next asks the queue) and the
    queue's readers see the task waiting again. A "next" still returns any the sweeper has
    not reached yet; both lock the task ``SKIP LOCKED``, so each lease expires once."""

    def __init__(self, work: WorkQueues, *, poll_s: float = 1.0) -> None:
        self._work = work
        self._worker = PollingWorker("lease sweeper", self._round, interval_s=poll_s)

    async def _round(self) -> bool:
        # A full batch: more may have run out already.
        return await self._work.return_run_out() >= _EXPIRE_BATCH


def _view(queue: str, counts: list[QueueCount]) -> QueueView:
    mine = [c for c in counts if c.queue == queue]
    oldest = [c.oldest_open for c in mine if c.oldest_open is not None]
    return QueueView(
        queue=queue,
        depth=sum(c.open for c in mine),
        leased=sum(c.leased for c in mine),
        oldest=min(oldest) if oldest else None,
        by_kind={c.kind: c.open for c in mine if c.open},
    )
