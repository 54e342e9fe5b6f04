"""The three services' runtimes, in-process, against the real broker and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from ledger_sync.entrypoints import bootstrap as ledger_sync_boot
from ledger_sync.settings import LedgerSyncSettings
from notifier.entrypoints import bootstrap as notifier_boot
from notifier.settings import NotifierSettings
from tests.support import migrate, running, unused_port
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings


@pytest.fixture
async def apps(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[dict[str, FastAPI]]:
    common = {
        "database_url": database_url,
        "kafka_bootstrap": stack["kafka_bootstrap"],
        "topic_prefix": topic_prefix,
        "environment": "test",
    }
    wf = WorkflowSettings.model_validate(common)
    ls = LedgerSyncSettings.model_validate(common)
    nt = NotifierSettings.model_validate(
        {**common, "smtp_port": unused_port(), "send_retry_backoff_s": 0}
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, wf.db_schema)
    await migrate(ledger_sync_boot.MIGRATIONS, database_url, ls.db_schema)
    await migrate(notifier_boot.MIGRATIONS, database_url, nt.db_schema)
    async with (
        running(workflow_boot.build_runtime(wf)) as w,
        running(ledger_sync_boot.build_runtime(ls)) as s,
        running(notifier_boot.build_runtime(nt)) as n,
    ):
        yield {
            "workflow": workflow_boot.create_app(w, manage_runtime=False),
            "ledger-sync": ledger_sync_boot.create_app(s, manage_runtime=False),
            "notifier": notifier_boot.create_app(n, manage_runtime=False),
        }
