"""The workflow alone, in-process, against the real broker and PostgreSQL: its runtime
(on a clock the test can move) and its REST app; the root conftest's ``lender`` publishes
to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from tests.support import migrate, running
from workflow.entrypoints import bootstrap
from workflow.settings import WorkflowSettings


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
async def workflow(
    stack: dict[str, str], database_url: str, topic_prefix: str, clock: OffsetClock
) -> AsyncIterator[Runtime]:
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
        }
    )
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    async with running(bootstrap.build_runtime(config, clock=clock)) as runtime:
        yield runtime


@pytest.fixture
async def api(workflow: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = bootstrap.create_app(workflow, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://workflow"
    ) as client:
        yield client
