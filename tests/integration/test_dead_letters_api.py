"""Dead letters over the workflow's REST API, against the real broker and PostgreSQL: a
malformed overdue event is dead-lettered by the running workflow, listed without its value,
replayed with a corrected value (idempotently), and then processed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from collections_kit.auth import dev_headers
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, running
from workflow.adapters.tables import cases
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

ADMIN = dev_headers(["admin"], subject="ops-test")


@pytest.fixture
async def workflow(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[Runtime]:
    settings = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
        }
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, settings.db_schema)
    async with running(workflow_boot.build_runtime(settings)) as runtime:
        yield runtime


async def publish_broken_overdue(bootstrap: str, prefix: str, loan_id: str) -> bytes:
    """Publish an overdue event with a broken field; return the corrected value."""
    _, key, value, headers = lending.record_for(lending.overdue(loan_id, Decimal("250.00")))
    broken = value.replace(b'"days_past_due":5', b'"days_past_due":"many"')
    assert broken != value
    p = await producer(bootstrap)
    try:
        await p.send_and_wait(
            prefix + Topic.LOANS_OVERDUE.value, value=broken, key=key, headers=headers
        )
    finally:
        await p.stop()
    return value


async def case_exists(runtime: Runtime, loan_id: str) -> bool:
    async with runtime.engine.connect() as conn:
        return (
            await conn.scalar(select(cases.c.case_id).where(cases.c.loan_id == loan_id)) is not None
        )


async def test_list_then_replay_a_corrected_value(
    workflow: Runtime, stack: dict[str, str], topic_prefix: str
) -> None:
    fixed = await publish_broken_overdue(stack["kafka_bootstrap"], topic_prefix, "L-dlq-api")
    app = workflow_boot.create_app(workflow, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://workflow"
    ) as client:
        assert (await client.get("/v1/dead-letters")).status_code == 401
        forbidden = await client.get(
            "/v1/dead-letters", headers=dev_headers(["cases:read"], subject="x")
        )
        assert forbidden.status_code == 403

        async def listed() -> list[dict[str, object]]:
            answer = await client.get("/v1/dead-letters", headers=ADMIN)
            assert answer.status_code == 200, answer.text
            letters: list[dict[str, object]] = answer.json()["dead_letters"]
            return letters

        letters = await eventually(listed)
        assert len(letters) == 1
        letter = letters[0]
        assert letter["error_kind"] == "invalid"
        assert letter["origin_topic"] == topic_prefix + Topic.LOANS_OVERDUE.value
        assert letter["loan_id"] == "L-dlq-api"
        assert "origin_value" not in letter
        assert int(str(letter["value_length"])) > 0
        assert not await case_exists(workflow, "L-dlq-api")

        missing = await client.post(
            "/v1/dead-letters/0-999999/replay",
            headers={**ADMIN, "Idempotency-Key": "replay-missing"},
        )
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

        headers = {**ADMIN, "Idempotency-Key": "replay-L-dlq-api-1"}
        body = {"value": fixed.decode(), "reason": "days_past_due fixed upstream"}
        first = await client.post(
            f"/v1/dead-letters/{letter['id']}/replay", headers=headers, json=body
        )
        assert first.status_code == 200, first.text
        assert first.json()["corrected"] is True
        again = await client.post(
            f"/v1/dead-letters/{letter['id']}/replay", headers=headers, json=body
        )
        assert again.json() == first.json()  # the same answer, not a second record
        reused = await client.post(
            f"/v1/dead-letters/{letter['id']}/replay",
            headers=headers,
            json={"reason": "something else"},
        )
        assert reused.status_code == 422

    assert await eventually(lambda: case_exists(workflow, "L-dlq-api"))


async def test_a_letter_whose_value_was_cut_replays_only_with_a_corrected_value(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> None:
    settings = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "max_record_bytes": 2048,
        }
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, settings.db_schema)
    _, key, value, headers = lending.record_for(lending.overdue("L-dlq-big", Decimal("9.00")))
    oversized = value[:-1] + b', "padding": "' + b"x" * 4096 + b'"}'
    p = await producer(stack["kafka_bootstrap"])
    try:
        await p.send_and_wait(
            topic_prefix + Topic.LOANS_OVERDUE.value, value=oversized, key=key, headers=headers
        )
    finally:
        await p.stop()
    async with running(workflow_boot.build_runtime(settings)) as runtime:
        app = workflow_boot.create_app(runtime, manage_runtime=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://workflow"
        ) as client:

            async def listed() -> list[dict[str, object]]:
                answer = await client.get("/v1/dead-letters", headers=ADMIN)
                letters: list[dict[str, object]] = answer.json()["dead_letters"]
                return letters

            letter = (await eventually(listed))[0]
            refused = await client.post(
                f"/v1/dead-letters/{letter['id']}/replay",
                headers={**ADMIN, "Idempotency-Key": "replay-big-1"},
            )
            assert refused.status_code == 409, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert "truncated" in refused.json()["detail"]
            fixed = await client.post(
                f"/v1/dead-letters/{letter['id']}/replay",
                headers={**ADMIN, "Idempotency-Key": "replay-big-2"},
                json={"value": value.decode(), "reason": "padding removed upstream"},
            )
            assert fixed.status_code == 200, fixed.text
        assert await eventually(lambda: case_exists(runtime, "L-dlq-big"))
