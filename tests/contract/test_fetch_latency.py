"""Which consumer may let the broker gather records: the notifier's repayment loop answers
at once (a repayment must stop contact without waiting); every other loop, the notifier's
others included, waits up to 100 ms for 64 KB under a trickle. Read from the Kafka consumer
each service builds."""

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


GATHER = (64 * 1024, 100)
AT_ONCE = (1, 500)


@pytest.mark.parametrize(
    ("build", "settings", "expected"),
    [
        # Commands and case events; repayments; checks and confirmations.
        (notifier_boot.build_runtime, NotifierSettings, [GATHER, AT_ONCE, GATHER]),
        (workflow_boot.build_runtime, WorkflowSettings, None),
        (ledger_sync_boot.build_runtime, LedgerSyncSettings, None),
    ],
)
async def test_only_the_notifier_repayment_loop_answers_fetches_at_once(
    build: Any, settings: Any, expected: list[tuple[int, int]] | None
) -> None:
    runtime = build(settings())
    try:
        assert runtime.loops
        wanted = expected or [GATHER] * len(runtime.loops)
        assert [_fetch(loop) for loop in runtime.loops] == wanted
    finally:
        await runtime.producer.stop()
        await runtime.engine.dispose()


async def test_the_notifier_repayment_loop_fetch_is_its_own_setting() -> None:
    runtime = notifier_boot.build_runtime(
        NotifierSettings(
            fetch_min_bytes=1024,
            fetch_max_wait_ms=50,
            repayment_fetch_min_bytes=2,
            repayment_fetch_max_wait_ms=250,
        )
    )
    try:
        assert [_fetch(loop) for loop in runtime.loops] == [(1024, 50), (2, 250), (1024, 50)]
    finally:
        await runtime.producer.stop()
        await runtime.engine.dispose()
