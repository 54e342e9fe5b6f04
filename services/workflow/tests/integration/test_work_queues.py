"""Work queues through the REST API, against the real broker and PostgreSQL: two collectors
asking for next at the same moment never get the same borrower; a repayment consumed from
Kafka while a task is leased withdraws it; results act on the case; leases run out, are
released and renewed; only the collectors the queue policy names (by subject or group) work a
queue; a retried request with its Idempotency-Key is answered as before; bad input is a
problem document and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually, mismatched_replays
from workflow.entrypoints import bootstrap

WRITE = dev_headers(["cases:read", "cases:write"], subject="supervisor:1")
QUEUE = "calls-zh"  # a Chinese case's call after its formal notice


def collector(name: str, groups: tuple[str, ...] = ("zh-CN",)) -> dict[str, str]:
    """A collector's token; by default one of the Chinese desk, who may work calls-zh."""
    return dev_headers(["collections:work"], subject=name, groups=groups)


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=WRITE)
    return response.json() if response.status_code == 200 else None


async def timeline(api: httpx.AsyncClient, loan_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/cases/{loan_id}/timeline", headers=WRITE)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


async def queue(api: httpx.AsyncClient, name: str = QUEUE) -> dict[str, Any]:
    response = await api.get(f"/v1/queues/{name}", headers=collector("supervisor"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def needs_a_call(
    api: httpx.AsyncClient, lender: lending.Lender, loan_id: str, borrower_id: str
) -> None:
    """A case past its formal notice: escalated by hand, it queues a call."""
    await lender.publish(lending.overdue(loan_id, Decimal("1000.00"), borrower_id=borrower_id))
    await eventually(lambda: case_of(api, loan_id))
    escalated = await api.post(
        f"/v1/cases/{loan_id}/escalations",
        json={"kind": "manual", "reason": "formal notice due"},
        headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["stage"] == "formal_notice"


async def next_task(
    api: httpx.AsyncClient, who: str, name: str = QUEUE, *, key: str | None = None
) -> httpx.Response:
    headers = {**collector(who), **({"Idempotency-Key": key} if key else {})}
    return await api.post(f"/v1/queues/{name}/next", headers=headers)


async def result(
    api: httpx.AsyncClient, who: str, task_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await api.post(f"/v1/tasks/{task_id}/result", json=body, headers=collector(who))


async def test_two_collectors_asking_at_the_same_moment_never_get_the_same_borrower(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    # Three borrowers, two loans each: six tasks, but only three borrowers to work.
    for b in range(3):
        for n in range(2):
            await needs_a_call(api, lender, f"L-c{b}-{n}", f"B-c{b}")
    assert (await queue(api))["depth"] == 6

    # Two clients of one service: two collectors at their desks.
    transport = httpx.ASGITransport(app=bootstrap.create_app(workflow, manage_runtime=False))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://workflow") as one,
        httpx.AsyncClient(transport=transport, base_url="http://workflow") as two,
    ):
        first = await asyncio.gather(next_task(one, "collector:1"), next_task(two, "collector:2"))
        second = await asyncio.gather(next_task(one, "collector:3"), next_task(two, "collector:4"))
    leased = [r.json() for r in (*first, *second) if r.status_code == 200]
    assert all(r.status_code in (200, 204) for r in (*first, *second))
    # Each borrower at most once, though every borrower has a second loan waiting.
    borrowers = [task["borrower_id"] for task in leased]
    assert len(borrowers) == len(set(borrowers)) == 3
    assert {task["collector"] for task in leased} <= {f"collector:{n}" for n in range(1, 5)}
    # The database holds it too: one leased task per borrower.
    state = await queue(api)
    assert (state["leased"], state["depth"]) == (3, 3)
    assert (await next_task(api, "collector:5")).status_code == 204


async def test_a_repayment_while_a_task_is_leased_withdraws_it_at_once(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await needs_a_call(api, lender, "L-repaid", "B-repaid")
    leased = await next_task(api, "collector:1")
    assert leased.status_code == 200, leased.text
    task = leased.json()
    assert (task["loan_id"], task["kind"], task["status"]) == (
        "L-repaid",
        "call_after_formal_notice",
        "leased",
    )

    await lender.publish(lending.repayment("L-repaid", Decimal("1000.00"), Decimal("0")))

    async def withdrawn() -> list[dict[str, Any]]:
        return [e for e in await timeline(api, "L-repaid") if e["kind"] == "task_withdrawn"]

    (entry,) = await eventually(withdrawn)
    assert entry["detail"]["task_id"] == task["task_id"]
    assert entry["detail"]["reason"] == "repaid"
    assert entry["detail"]["collector"] == "collector:1"
    case = await case_of(api, "L-repaid")
    assert case is not None
    assert case["exit"] == "repaid"
    # The collector's phone stops: their result is refused, and nothing is left to work.
    late = await result(
        api, "collector:1", task["task_id"], {"action": "outbound_call", "result": "no_answer"}
    )
    assert late.status_code == 409
    assert late.headers["content-type"] == "application/problem+json"
    assert "withdrawn (repaid)" in late.json()["detail"]
    assert (await queue(api))["leased"] == 0
    assert (await next_task(api, "collector:2")).status_code == 204
    assert await mismatched_replays(workflow.engine) == []


async def test_bad_input_is_a_problem_and_changes_nothing(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await needs_a_call(api, lender, "L-bad", "B-bad")
    unknown = await next_task(api, "collector:1", name="no-such-queue")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "no-such-queue" in unknown.json()["detail"]
    assert (await api.get("/v1/queues/no-such-queue", headers=collector("c"))).status_code == 404

    task = (await next_task(api, "collector:1")).json()
    before = (await timeline(api, "L-bad"), await case_of(api, "L-bad"), await queue(api))

    not_mine = await result(
        api, "collector:2", task["task_id"], {"action": "outbound_call", "result": "no_answer"}
    )
    assert not_mine.status_code == 409
    assert not_mine.headers["content-type"] == "application/problem+json"
    assert not_mine.json()["title"] == "Task not held"
    assert "do not hold" in not_mine.json()["detail"]
    for path in ("release", "renew"):
        refused = await api.post(
            f"/v1/tasks/{task['task_id']}/{path}", headers=collector("collector:2")
        )
        assert refused.status_code == 409
    missing = await result(
        api, "collector:1", "T-none", {"action": "outbound_call", "result": "no_answer"}
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    # A promise dated in the past: the case's rules refuse it, and the task stays leased.
    past = await result(
        api,
        "collector:1",
        task["task_id"],
        {
            "action": "outbound_call",
            "result": "promise_to_pay",
            "promise": {
                "amount": "100.00",
                "due_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            },
        },
    )
    assert past.status_code == 409, past.text
    assert "already past" in past.json()["detail"]
    # A promise result without the promise, an unknown result code: invalid requests.
    for body in (
        {"action": "outbound_call", "result": "promise_to_pay"},
        {"action": "outbound_call", "result": "went_fishing"},
    ):
        invalid = await result(api, "collector:1", task["task_id"], body)
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
    # Without the scope: 403.
    denied = await api.post(f"/v1/queues/{QUEUE}/next", headers=WRITE)
    assert denied.status_code == 403
    after = (await timeline(api, "L-bad"), await case_of(api, "L-bad"), await queue(api))
    assert after == before


async def test_results_act_on_the_case(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await needs_a_call(api, lender, "L-promise", "B-promise")
    await needs_a_call(api, lender, "L-refuse", "B-refuse")
    await needs_a_call(api, lender, "L-hardship", "B-hardship")
    by_loan = {}
    for n in range(3):
        task = (await next_task(api, f"collector:{n}")).json()
        by_loan[task["loan_id"]] = (task["task_id"], f"collector:{n}")

    task_id, who = by_loan["L-promise"]
    due = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    promised = await result(
        api,
        who,
        task_id,
        {
            "action": "outbound_call",
            "result": "promise_to_pay",
            "note": "pays on Friday",
            "promise": {"amount": "300.00", "due_at": due},
        },
    )
    assert promised.status_code == 200, promised.text
    assert promised.json()["task"]["status"] == "done"
    case = await case_of(api, "L-promise")
    assert case is not None
    assert case["arrangement"]["kind"] == "promise_to_pay"
    assert Decimal(case["arrangement"]["total"]) == Decimal("300")

    task_id, who = by_loan["L-refuse"]
    refused = await result(
        api, who, task_id, {"action": "outbound_call", "result": "refused_to_pay"}
    )
    assert refused.status_code == 200, refused.text
    follow_up = refused.json()["follow_up"]
    assert (follow_up["kind"], follow_up["queue"]) == ("negotiation", "negotiation")

    task_id, who = by_loan["L-hardship"]
    held = await result(
        api, who, task_id, {"action": "inbound_call", "result": "hardship_declared"}
    )
    assert held.status_code == 200, held.text
    case = await case_of(api, "L-hardship")
    assert case is not None
    assert (case["status"], case["hold"]["kind"], case["hold"]["actor"]) == (
        "held",
        "hardship",
        who,
    )
    kinds = [e["kind"] for e in await timeline(api, "L-hardship")]
    assert (
        kinds.index("task_leased") < kinds.index("task_result_recorded") < kinds.index("case_held")
    )
    assert await mismatched_replays(workflow.engine) == []


async def test_a_lease_runs_out_is_renewed_and_released(
    api: httpx.AsyncClient, lender: lending.Lender, clock: OffsetClock
) -> None:
    await needs_a_call(api, lender, "L-lease", "B-lease")
    task = (await next_task(api, "collector:1")).json()
    renewed = await api.post(f"/v1/tasks/{task['task_id']}/renew", headers=collector("collector:1"))
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["renewals"] == 1
    assert renewed.json()["lease_until"] > task["lease_until"]

    clock.advance(timedelta(minutes=16))
    assert (await queue(api))["depth"] == 1  # a lease that ran out waits again
    taken = await next_task(api, "collector:2")
    assert taken.status_code == 200, taken.text
    assert (taken.json()["task_id"], taken.json()["collector"]) == (task["task_id"], "collector:2")
    late = await result(
        api, "collector:1", task["task_id"], {"action": "outbound_call", "result": "no_answer"}
    )
    assert late.status_code == 409

    released = await api.post(
        f"/v1/tasks/{task['task_id']}/release", headers=collector("collector:2")
    )
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "open"
    kinds = [e["kind"] for e in await timeline(api, "L-lease")]
    assert [k for k in kinds if k.startswith("task_")] == [
        "task_created",
        "task_leased",
        "task_lease_renewed",
        "task_lease_expired",
        "task_leased",
        "task_released",
    ]
    listed = await api.get("/v1/queues", headers=collector("supervisor"))
    assert listed.status_code == 200
    mine = next(q for q in listed.json()["queues"] if q["queue"] == QUEUE)
    assert mine["by_kind"] == {"call_after_formal_notice": 1}


async def test_only_the_collectors_the_queue_policy_names_work_a_queue(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await needs_a_call(api, lender, "L-desk", "B-desk")
    before = (await timeline(api, "L-desk"), await queue(api))
    # A collector of the legal staff, not of the Chinese desk: 403 naming the queue.
    outsider = await api.post(f"/v1/queues/{QUEUE}/next", headers=collector("c:9", ("legal",)))
    assert outsider.status_code == 403, outsider.text
    assert outsider.headers["content-type"] == "application/problem+json"
    problem = outsider.json()
    assert problem["title"] == "Queue not assigned"
    assert "may not work the queue calls-zh" in problem["detail"]
    assert "group zh-CN" in problem["detail"]
    # Legal review is legal staff's only; an unknown queue stays 404 for anyone.
    legal = await api.post("/v1/queues/legal/next", headers=collector("c:1"))
    assert legal.status_code == 403
    assert "the queue legal" in legal.json()["detail"]
    assert (await next_task(api, "c:9", name="no-such-queue")).status_code == 404
    assert (
        await api.post("/v1/queues/legal/next", headers=collector("c:9", ("legal",)))
    ).status_code == 204
    assert (await timeline(api, "L-desk"), await queue(api)) == before

    # A task of the queue: its holder's colleague outside the desk may not touch it either.
    task = (await next_task(api, "c:1")).json()
    before = (await timeline(api, "L-desk"), await queue(api))
    for path, body in (
        ("result", {"action": "outbound_call", "result": "no_answer"}),
        ("renew", None),
        ("release", None),
    ):
        refused = await api.post(
            f"/v1/tasks/{task['task_id']}/{path}", json=body, headers=collector("c:1", ())
        )
        assert refused.status_code == 403, refused.text
        assert "calls-zh" in refused.json()["detail"]
    assert (await timeline(api, "L-desk"), await queue(api)) == before


async def test_a_retry_with_its_idempotency_key_is_answered_as_before(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await needs_a_call(api, lender, "L-retry-1", "B-retry-1")
    await needs_a_call(api, lender, "L-retry-2", "B-retry-2")
    first = await next_task(api, "c:1", key="next-key-0001")
    assert first.status_code == 200, first.text
    again = await next_task(api, "c:1", key="next-key-0001")
    # The same task, not a second lease of the other borrower.
    assert again.status_code == 200
    assert again.json() == first.json()
    state = await queue(api)
    assert (state["leased"], state["depth"]) == (1, 1)
    task = first.json()
    leases = [e for e in await timeline(api, task["loan_id"]) if e["kind"] == "task_leased"]
    assert len(leases) == 1
    # The same key from another collector, or for another queue: refused, nothing changes.
    for who, name in (("c:2", QUEUE), ("c:1", "calls")):
        reused = await next_task(api, who, name, key="next-key-0001")
        assert reused.status_code == 422, reused.text
        assert reused.headers["content-type"] == "application/problem+json"
        assert reused.json()["title"] == "Idempotency-Key reused"
    assert await queue(api) == state

    # A result retried after its answer was lost: the same answer, one result on the case.
    body = {"action": "outbound_call", "result": "no_answer"}
    headers = {**collector("c:1"), "Idempotency-Key": "result-key-01"}
    done = await api.post(f"/v1/tasks/{task['task_id']}/result", json=body, headers=headers)
    assert done.status_code == 200, done.text
    retried = await api.post(f"/v1/tasks/{task['task_id']}/result", json=body, headers=headers)
    assert (retried.status_code, retried.json()) == (200, done.json())
    other = await api.post(
        f"/v1/tasks/{task['task_id']}/result",
        json={"action": "outbound_call", "result": "wrong_number"},
        headers=headers,
    )
    assert other.status_code == 422
    results = [
        e for e in await timeline(api, task["loan_id"]) if e["kind"] == "task_result_recorded"
    ]
    assert len(results) == 1

    # Release and renew retried: answered as before, not refused as "not held".
    second = (await next_task(api, "c:2")).json()
    for path in ("renew", "release"):
        headers = {**collector("c:2"), "Idempotency-Key": f"{path}-key-0001"}
        url = f"/v1/tasks/{second['task_id']}/{path}"
        once = await api.post(url, headers=headers)
        assert once.status_code == 200, once.text
        assert (await api.post(url, headers=headers)).json() == once.json()
    kinds = [e["kind"] for e in await timeline(api, second["loan_id"])]
    assert (kinds.count("task_lease_renewed"), kinds.count("task_released")) == (1, 1)


async def test_a_lease_that_runs_out_is_swept_back_once_without_a_next(
    api: httpx.AsyncClient, lender: lending.Lender, clock: OffsetClock
) -> None:
    await needs_a_call(api, lender, "L-swept", "B-swept")
    task = (await next_task(api, "c:1")).json()
    assert ((await queue(api))["leased"], (await queue(api))["depth"]) == (1, 0)

    clock.advance(timedelta(minutes=16))
    # Readers count it waiting at once, whether or not it was swept yet.
    state = await queue(api)
    assert (state["leased"], state["depth"]) == (0, 1)
    listed = await api.get("/v1/queues", headers=collector("supervisor"))
    mine = next(q for q in listed.json()["queues"] if q["queue"] == QUEUE)
    assert (mine["leased"], mine["depth"]) == (0, 1)

    async def expired() -> list[dict[str, Any]]:
        return [e for e in await timeline(api, "L-swept") if e["kind"] == "task_lease_expired"]

    # Nobody asked the queue for next: the sweeper put the expiry on the timeline.
    (entry,) = await eventually(expired)
    assert entry["actor"] == "lease-sweeper"
    assert entry["detail"]["task_id"] == task["task_id"]
    assert entry["detail"]["collector"] == "c:1"
    assert entry["detail"]["lease_until"] is not None
    taken = await next_task(api, "c:2")
    assert taken.status_code == 200
    assert taken.json()["task_id"] == task["task_id"]
    await asyncio.sleep(1.5)  # a sweep or two more: still one expiry for that lease
    assert len(await expired()) == 1


async def test_a_lapsed_lease_counts_as_waiting_before_anything_returns_it(
    workflow: Runtime, api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """The depths are computed on read: a lease past its end is waiting, not leased, even
    while its row still says leased (between two sweeps)."""
    await needs_a_call(api, lender, "L-lapsed", "B-lapsed")
    task = (await next_task(api, "c:1")).json()
    async with workflow.state["uow"]() as uow:
        now = uow.now
        running = await uow.tasks.counts(now)
        lapsed = await uow.tasks.counts(now + timedelta(minutes=16))
        row = await uow.tasks.get(task["task_id"])
    assert row is not None
    assert row.status.value == "leased"  # nothing returned it: the reads alone
    assert [(c.open, c.leased) for c in running if c.queue == QUEUE] == [(0, 1)]
    assert [(c.open, c.leased) for c in lapsed if c.queue == QUEUE] == [(1, 0)]
