"""The work queues' use cases: next, result, release, renew, and the queues' depths.

Each is one unit of work; a refusal (:class:`~workflow.domain.tasks.TaskRefusedError`) leaves it
uncommitted, so nothing changes. The rules are the domain's (``domain/tasks.py``); this
only loads, applies them and saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from collections_kit.clock import new_id
from workflow.app.handlers import Workflow
from workflow.app.ports import QueueCount, StartUnitOfWork, TaskStep, TaskStore
from workflow.domain import tasks as t

# How many candidates one "next" looks at: enough to step past borrowers other collectors
# are taking at the same moment.
_CANDIDATES = 20
# Leases run out and are returned by "next" itself, a bounded number at a time.
_EXPIRE_BATCH = 200


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


class WorkQueues:
    def __init__(self, uow: StartUnitOfWork, workflow: Workflow, policy: t.QueuePolicy) -> None:
        self._uow = uow
        self._workflow = workflow
        self._policy = policy

    def _known(self, queue: str) -> None:
        if queue not in self._policy.queues:
            raise UnknownQueueError(queue)

    async def next(self, queue: str, collector: str) -> t.Task | None:
        """Lease ``collector`` the most urgent task of ``queue`` whose borrower nobody is
        working (None: nothing to work)."""
        self._known(queue)
        async with self._uow(actor=collector) as uow:
            await self._return_run_out(uow.tasks, uow.now, uow.tx.actor)
            for candidate in await uow.tasks.candidates(queue, _CANDIDATES):
                if not await uow.tasks.claim_borrower(candidate.borrower_id):
                    continue  # another collector is taking this borrower right now
                task = await uow.tasks.lock_open(candidate.task_id)
                if task is None:
                    continue  # taken or withdrawn since the candidates were read
                leased = t.lease(task, collector, new_id(), uow.now, self._policy)
                if not await uow.tasks.take(leased):
                    continue  # someone took the borrower since the candidates were read
                await self._record(
                    uow.tasks,
                    [
                        TaskStep(
                            leased,
                            "task_leased",
                            {
                                "collector": collector,
                                "lease_until": leased.lease_until.isoformat()
                                if leased.lease_until
                                else None,
                            },
                            f"lease:{leased.lease_id}",
                        )
                    ],
                    uow.now,
                    collector,
                )
                await uow.commit()
                return leased
            await uow.commit()  # the leases it returned
            return None

    async def _return_run_out(self, store: TaskStore, now: datetime, actor: str) -> int:
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

    async def renew(self, task_id: str, collector: str) -> t.Task:
        async with self._uow(actor=collector) as uow:
            task = await self._held(uow.tasks, task_id)
            renewed = t.renew(task, collector, uow.now, self._policy)
            await uow.tasks.save([renewed])
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
            await uow.commit()
            return renewed

    async def release(self, task_id: str, collector: str) -> t.Task:
        async with self._uow(actor=collector) as uow:
            task = await self._held(uow.tasks, task_id)
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
            await uow.commit()
            return released

    async def result(
        self,
        task_id: str,
        collector: str,
        result: t.ResultCode,
        action: t.Action,
        *,
        note: str = "",
        promise: t.Promise | None = None,
    ) -> Worked:
        """Record what came of the task and apply it to the case, in one transaction: a
        result the case's rules refuse (a promise dated in the past, say) changes nothing."""
        async with self._uow(actor=collector) as uow:
            seen = await self._held(uow.tasks, task_id, lock=False)
            # The case first, then its task: the order a consumed repayment locks them in
            # (the other order could deadlock with it).
            await uow.cases.get(seen.loan_id, lock=True)
            task = await self._held(uow.tasks, task_id)
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
            await uow.commit()
            return Worked(done, follow_up)

    async def _held(self, store: TaskStore, task_id: str, *, lock: bool = True) -> t.Task:
        task = await store.get(task_id, lock=lock)
        if task is None:
            raise t.TaskRefusedError(404, "Task not found", f"No task {task_id}.")
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
