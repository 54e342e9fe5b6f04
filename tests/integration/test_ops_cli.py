"""The operator CLI (``collections-ops``) against a running workflow (its real runtime and
HTTP server in this process, the real broker and PostgreSQL): a malformed overdue event is
dead-lettered, the CLI lists it and replays it with a corrected value, the workflow opens the
case; then the CLI shows the case, its timeline, holds and resumes it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from collections_kit.auth import dev_token
from collections_kit.runtime import Runtime
from tests.integration.test_dead_letters_api import case_exists, publish_broken_overdue
from tests.support import eventually, migrate, running, unused_port
from workflow import cli
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings


@pytest.fixture
async def workflow_url(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[tuple[Runtime, str]]:
    port = unused_port()
    settings = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "http_port": port,
        }
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, settings.db_schema)
    async with running(workflow_boot.build_runtime(settings)) as runtime:
        app = workflow_boot.create_app(runtime, manage_runtime=False)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
            )
        )
        task = asyncio.create_task(server.serve())
        await eventually(lambda: server.started)
        try:
            yield runtime, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ops(
    url: str, *args: str, scopes: tuple[str, ...] = ("admin", "cases:read", "cases:write")
) -> str:
    env = {
        "COLLECTIONS_API_URL": url,
        "COLLECTIONS_TOKEN": dev_token(scopes, "operator-7", audience="workflow"),
    }
    result = await asyncio.to_thread(CliRunner().invoke, cli.app, list(args), env=env)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result.output


async def test_cli_lists_and_replays_a_dead_letter_then_works_the_case(
    workflow_url: tuple[Runtime, str], stack: dict[str, str], topic_prefix: str, tmp_path: Path
) -> None:
    runtime, url = workflow_url
    loan = "L-ops-cli"
    fixed = await publish_broken_overdue(stack["kafka_bootstrap"], topic_prefix, loan)

    async def listed() -> str | None:
        out = await ops(url, "dlq", "list")
        return out if loan in out else None

    out = await eventually(listed)
    assert "1 dead letters" in out
    assert "invalid" in out
    letters = json.loads(await ops(url, "--json", "dlq", "list"))["dead_letters"]
    letter_id = letters[0]["id"]
    assert not await case_exists(runtime, loan)

    value_file = tmp_path / "fixed.json"
    value_file.write_bytes(fixed)
    replayed = await ops(
        url,
        "dlq",
        "replay",
        letter_id,
        "--value-file",
        str(value_file),
        "--reason",
        "days_past_due fixed upstream",
    )
    assert f"replayed {letter_id} to {topic_prefix}loans.overdue.v1/" in replayed
    assert "(corrected value)" in replayed
    assert await eventually(lambda: case_exists(runtime, loan))

    shown = await ops(url, "case", "show", loan)
    assert "stage:" in shown
    assert "warning" in shown
    assert f"B-{loan}" not in shown  # the borrower id stays out of the output
    held = await ops(
        url, "case", "hold", loan, "--kind", "operator", "--reason", "checking a complaint"
    )
    assert "status:" in held
    assert "held" in held
    resumed = await ops(url, "case", "resume", loan, "--reason", "complaint answered")
    assert "hold:" not in resumed
    timeline = await ops(url, "case", "timeline", loan)
    assert "case_opened" in timeline
    assert "operator-7" in timeline


async def test_cli_reports_problems_and_exits_non_zero(workflow_url: tuple[Runtime, str]) -> None:
    _, url = workflow_url
    env = {
        "COLLECTIONS_API_URL": url,
        "COLLECTIONS_TOKEN": dev_token(("cases:read",), "operator-7", audience="workflow"),
    }
    result = await asyncio.to_thread(CliRunner().invoke, cli.app, ["dlq", "list"], env=env)
    assert result.exit_code == 1
    assert "403" in result.stderr
    result = await asyncio.to_thread(
        CliRunner().invoke, cli.app, ["case", "show", "L-nobody"], env=env
    )
    assert result.exit_code == 1
    assert "404 Case not found" in result.stderr
