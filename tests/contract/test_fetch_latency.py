"""Which consumer may let the broker gather records: the notifier's fetches answer at once
(a repayment must stop contact without waiting), the workflow's and ledger-sync's wait up
to 100 ms for 64 KB under a trickle. Read from the Kafka consumer each service builds."""

from __future__ import annotations

from typing import Any

import pytest

from collections_kit.consumer import ConsumerLoop
from ledger_sync.entrypoints import bootstrap as ledger_sync_boot
from ledger_sync.settings import LedgerSyncSettings
from notifier.entrypoints import bootstrap as notifier_boot
from notifier.settings import NotifierSettings
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings


def _fetch(loop: ConsumerLoop) -> tuple[Any, Any]:
    consumer = loop._consumer()
    return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms


@pytest.mark.parametrize(
    ("build", "settings", "expected"),
    [
        (notifier_boot.build_runtime, NotifierSettings, (1, 500)),
        (workflow_boot.build_runtime, WorkflowSettings, (64 * 1024, 100)),
        (ledger_sync_boot.build_runtime, LedgerSyncSettings, (64 * 1024, 100)),
    ],
)
async def test_only_the_notifier_answers_fetches_at_once(
    build: Any, settings: Any, expected: tuple[int, int]
) -> None:
    runtime = build(settings())
    try:
        assert runtime.loops
        assert [_fetch(loop) for loop in runtime.loops] == [expected] * len(runtime.loops)
    finally:
        await runtime.producer.stop()
        await runtime.engine.dispose()
