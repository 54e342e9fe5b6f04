"""REST for collectors: the work queues. ``next`` leases the most urgent task a collector may
work (the collector is the token's subject; the queues they may work are the queue policy's,
by subject or by the token's ``groups``), a result acts on the case, a lease is released
or renewed; the queues' depths for whoever supervises them. Every refusal is an RFC 9457
problem document, and nothing changes. The task routes take an optional
``Idempotency-Key``: a retry with it is answered as its first attempt was."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, model_validator

from collections_kit.auth import Principal, require
from collections_kit.money import NonNegativeAmount
from collections_kit.problems import (
    AUTH_RESPONSES,
    PROBLEM_JSON,
    PROBLEM_RESPONSES,
    Problem,
    ProblemError,
)
from workflow.app.commands import KeyReusedError
from workflow.app.ports import KeptAnswer
from workflow.app.work import Once, QueueView, UnknownQueueError, Worked, WorkQueues
from workflow.domain import tasks as t
from workflow.entrypoints.api import Timestamp

Collector = Annotated[Principal, require("collections:work")]
QueueName = Annotated[str, Path(pattern=r"^[a-z0-9-]{1,64}$", examples=["calls"])]
TaskId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
# Optional here (the case writes require one): a collector's client that retries a request
# whose answer it lost sends one, and is answered as the first attempt was.
OptionalIdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Unique per intended request; a retry with the same key replays the "
        "answer (a retried next gets the same task, not a second lease). The same key with "
        "another request is refused (422).",
        examples=["0b6c6d0e-5a53-4a4e-9d7e-3f0a4c1d2e71"],
    ),
]

_CONFLICT = {
    "model": Problem,
    "description": "Not allowed now: the task is not yours, its lease ran out, it was "
    "withdrawn or already worked, or the case's rules refuse the result",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
# 403 is also the queue policy's: the caller holds the scope but may not work this queue.
_FORBIDDEN = {
    **AUTH_RESPONSES["403"],
    "description": "The token lacks the scope collections:work, or the queue policy does not "
    "let the caller work this queue (the problem names the queue)",
}
TASK_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    403: _FORBIDDEN,
    409: _CONFLICT,
}


class TaskView(BaseModel):
    task_id: str
    case_id: str
    loan_id: str
    borrower_id: str
    kind: t.TaskKind
    queue: str
    priority: int = Field(description="Lower is more urgent.")
    status: t.TaskStatus
    reason: str = Field(description="The situation that made the task.")
    created_at: datetime
    collector: str | None
    lease_until: datetime | None = Field(
        description="The lease runs out then, and the task goes back to its queue."
    )
    renewals: int
    outcome: str | None = Field(
        description="The result code (done) or why the task was withdrawn (withdrawn)."
    )
    ended_at: datetime | None


class PromiseRequest(BaseModel):
    amount: NonNegativeAmount
    due_at: Timestamp


class ResultRequest(BaseModel):
    action: t.Action
    result: t.ResultCode
    note: str = Field(default="", max_length=500)
    promise: PromiseRequest | None = Field(
        default=None, description="Required with promise_to_pay, refused with any other result."
    )

    @model_validator(mode="after")
    def _promise_with_promise_to_pay(self) -> ResultRequest:
        if (self.result is t.ResultCode.PROMISE_TO_PAY) != (self.promise is not None):
            raise ValueError("promise is given with promise_to_pay, and only with it")
        return self

    model_config = {
        "json_schema_extra": {
            # The validator's rule, stated in the schema too, so a client (or a fuzzer)
            # generating from the OpenAPI document never sends a body it cannot know is
            # refused: a promise object with promise_to_pay, none (or null) otherwise.
            "if": {"properties": {"result": {"const": "promise_to_pay"}}, "required": ["result"]},
            "then": {"required": ["promise"], "properties": {"promise": {"type": "object"}}},
            "else": {"properties": {"promise": {"type": "null"}}},
            "examples": [
                {
                    "action": "outbound_call",
                    "result": "promise_to_pay",
                    "note": "pays on Friday",
                    "promise": {"amount": "250.00", "due_at": "2099-01-23T00:00:00Z"},
                }
            ],
        }
    }


class ResultView(BaseModel):
    task: TaskView
    follow_up: TaskView | None = Field(
        default=None, description="The task the result made (a negotiation after a refusal)."
    )


class QueueSummary(BaseModel):
    queue: str
    depth: int = Field(description="Tasks waiting (a lease that ran out waits again).")
    leased: int
    oldest: datetime | None = Field(description="When the oldest waiting task was created.")
    by_kind: dict[str, int] = Field(description="Waiting tasks by kind.")


class QueueList(BaseModel):
    queues: list[QueueSummary]


router = APIRouter(prefix="/v1", tags=["work queues"])


def _work(request: Request) -> WorkQueues:
    work: WorkQueues = request.app.state.runtime.state["work"]
    return work


def _task_view(task: t.Task) -> TaskView:
    return TaskView(
        task_id=task.task_id,
        case_id=task.case_id,
        loan_id=task.loan_id,
        borrower_id=task.borrower_id,
        kind=task.kind,
        queue=task.queue,
        priority=task.priority,
        status=task.status,
        reason=task.reason,
        created_at=task.created_at,
        collector=task.collector,
        lease_until=task.lease_until,
        renewals=task.renewals,
        outcome=task.outcome,
        ended_at=task.ended_at,
    )


def _queue_view(q: QueueView) -> QueueSummary:
    return QueueSummary(
        queue=q.queue, depth=q.depth, leased=q.leased, oldest=q.oldest, by_kind=q.by_kind
    )


def _unknown_queue(queue: str) -> ProblemError:
    return ProblemError(
        404,
        "Unknown queue",
        f"There is no queue {queue}: the queue policy names the queues (GET /v1/queues).",
        type_="https://collections.example/problems/unknown-queue",
    )


def _refused(refusal: t.TaskRefusedError) -> ProblemError:
    slug = refusal.title.lower().replace(" ", "-")
    return ProblemError(
        refusal.status,
        refusal.title,
        refusal.detail,
        type_=f"https://collections.example/problems/{slug}",
    )


def _worker(caller: Principal) -> t.Worker:
    return t.Worker(caller.subject, caller.groups)


def _once(key: str | None, request: Request, body: Any, answer: Any) -> Any:
    if key is None:
        return None
    return Once(key, {"route": request.url.path, "body": body}, answer)


def _replayed(kept: KeptAnswer) -> Response:
    if kept.status == 204:
        return Response(status_code=204)
    media = PROBLEM_JSON if kept.status >= 400 else "application/json"
    return JSONResponse(kept.body, status_code=kept.status, media_type=media)


def _key_reused() -> ProblemError:
    # As the case writes answer it (entrypoints/api.py).
    return ProblemError(422, "Idempotency-Key reused", "This key was used for a different request.")


def _answer_task(task: t.Task) -> tuple[int, dict[str, Any]]:
    return 200, _task_view(task).model_dump(mode="json")


def _answer_next(task: t.Task | None) -> tuple[int, dict[str, Any]]:
    return (204, {}) if task is None else _answer_task(task)


def _result_view(worked: Worked) -> ResultView:
    return ResultView(
        task=_task_view(worked.task),
        follow_up=_task_view(worked.follow_up) if worked.follow_up else None,
    )


def _answer_result(worked: Worked) -> tuple[int, dict[str, Any]]:
    return 200, _result_view(worked).model_dump(mode="json")


@router.post(
    "/queues/{queue}/next",
    response_model=TaskView,
    responses={**TASK_PROBLEMS, 204: {"description": "Nothing to work in this queue now"}},
    summary="Lease the most urgent task of a queue whose borrower nobody is working",
)
async def next_task(
    queue: QueueName, request: Request, caller: Collector, key: OptionalIdempotencyKey = None
) -> Any:
    try:
        task = await _work(request).next(
            queue, _worker(caller), once=_once(key, request, None, _answer_next)
        )
    except UnknownQueueError as exc:
        raise _unknown_queue(queue) from exc
    except t.TaskRefusedError as refusal:
        raise _refused(refusal) from refusal
    except KeyReusedError as exc:
        raise _key_reused() from exc
    if isinstance(task, KeptAnswer):
        return _replayed(task)
    if task is None:
        return Response(status_code=204)
    return _task_view(task)


@router.post(
    "/tasks/{task_id}/result",
    response_model=ResultView,
    responses=TASK_PROBLEMS,
    summary="Record what came of a task you hold; it acts on the case",
)
async def record_result(
    task_id: TaskId,
    body: ResultRequest,
    request: Request,
    caller: Collector,
    key: OptionalIdempotencyKey = None,
) -> Any:
    promise = t.Promise(body.promise.amount, body.promise.due_at) if body.promise else None
    try:
        worked = await _work(request).result(
            task_id,
            _worker(caller),
            body.result,
            body.action,
            note=body.note,
            promise=promise,
            once=_once(key, request, body.model_dump(mode="json"), _answer_result),
        )
    except t.TaskRefusedError as refusal:
        raise _refused(refusal) from refusal
    except KeyReusedError as exc:
        raise _key_reused() from exc
    if isinstance(worked, KeptAnswer):
        return _replayed(worked)
    return _result_view(worked)


@router.post(
    "/tasks/{task_id}/release",
    response_model=TaskView,
    responses=TASK_PROBLEMS,
    summary="Give a task you hold back to its queue",
)
async def release_task(
    task_id: TaskId, request: Request, caller: Collector, key: OptionalIdempotencyKey = None
) -> Any:
    try:
        released = await _work(request).release(
            task_id, _worker(caller), once=_once(key, request, None, _answer_task)
        )
    except t.TaskRefusedError as refusal:
        raise _refused(refusal) from refusal
    except KeyReusedError as exc:
        raise _key_reused() from exc
    return _replayed(released) if isinstance(released, KeptAnswer) else _task_view(released)


@router.post(
    "/tasks/{task_id}/renew",
    response_model=TaskView,
    responses=TASK_PROBLEMS,
    summary="Extend the lease of a task you hold",
)
async def renew_task(
    task_id: TaskId, request: Request, caller: Collector, key: OptionalIdempotencyKey = None
) -> Any:
    try:
        renewed = await _work(request).renew(
            task_id, _worker(caller), once=_once(key, request, None, _answer_task)
        )
    except t.TaskRefusedError as refusal:
        raise _refused(refusal) from refusal
    except KeyReusedError as exc:
        raise _key_reused() from exc
    return _replayed(renewed) if isinstance(renewed, KeptAnswer) else _task_view(renewed)


@router.get(
    "/queues",
    response_model=QueueList,
    responses=PROBLEM_RESPONSES,
    summary="Every queue: depth, oldest waiting task, leased, waiting by kind",
)
async def list_queues(request: Request, _: Collector) -> QueueList:
    return QueueList(queues=[_queue_view(q) for q in await _work(request).queues()])


@router.get(
    "/queues/{queue}",
    response_model=QueueSummary,
    responses=PROBLEM_RESPONSES,
    summary="One queue: depth, oldest waiting task, leased, waiting by kind",
)
async def get_queue(queue: QueueName, request: Request, _: Collector) -> QueueSummary:
    try:
        return _queue_view(await _work(request).queue(queue))
    except UnknownQueueError as exc:
        raise _unknown_queue(queue) from exc
