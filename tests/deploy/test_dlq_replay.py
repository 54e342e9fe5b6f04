"""deploy/ops/dlq_replay.py, as the runbook runs it (``python - ... < dlq_replay.py``),
against the real local broker: it lists a group's dead letters and re-publishes the original
records unchanged."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from collections_kit.contract import DeadLetter
from collections_kit.envelope import Envelope, encode
from scripts.deploy_check import ROOT
from scripts.infra import create_topics, delete_topics, producer

pytestmark = pytest.mark.integration
TOOL = ROOT / "deploy" / "ops" / "dlq_replay.py"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-", *args],
        stdin=TOOL.open(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def publish_original_and_letters(bootstrap: str, prefix: str) -> tuple[int, int]:
    origin = f"{prefix}loans.repayment.v1"
    p = await producer(bootstrap)
    try:
        meta = await p.send_and_wait(
            origin,
            key=b"loan-7",
            value=b'{"amount": "12.50"}',
            headers=[("ce_id", b"evt-7"), ("ce_type", b"x.v1")],
        )
        now = datetime.now(UTC)
        for group, kind in (
            (f"{prefix}ledger-sync", "handler_failed"),
            (f"{prefix}ledger-sync", "handler_failed"),  # relayed twice
            (f"{prefix}workflow", "invalid"),
        ):
            letter = DeadLetter(
                reason="boom",
                error_kind=kind,
                consumer_group=group,
                origin_topic=origin,
                origin_partition=meta.partition,
                origin_offset=meta.offset,
                origin_key="loan-7",
                origin_headers={"ce_id": "evt-7", "ce_type": "x.v1"},
                origin_value='{"amount": "12.50"}',
                value_encoding="utf-8",
                failed_at=now,
            )
            key, value, headers = encode(
                Envelope(
                    id=f"dlq:{group}",
                    type="collections.dead-letter.v1",
                    source="ledger-sync",
                    time=now,
                    subject="loan-7",
                    data=letter,
                )
            )
            await p.send_and_wait(
                f"{prefix}collections.dlq.v1", key=key, value=value, headers=headers
            )
        return meta.partition, meta.offset
    finally:
        await p.stop()


async def records_after(
    bootstrap: str, topic: str, partition: int, offset: int
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset + 1)
        batches = await consumer.getmany(tp, timeout_ms=3000)
        return [(r.key, r.value, list(r.headers)) for r in batches.get(tp, [])]
    finally:
        await consumer.stop()


def test_lists_then_replays_the_original_record(stack: dict[str, str]) -> None:
    bootstrap = stack["kafka_bootstrap"]
    prefix = f"t{uuid.uuid4().hex[:10]}."
    asyncio.run(create_topics(bootstrap, prefix, partitions=1))
    try:
        partition, offset = asyncio.run(publish_original_and_letters(bootstrap, prefix))
        common = (
            "--bootstrap",
            bootstrap,
            "--group",
            f"{prefix}ledger-sync",
            "--topic-prefix",
            prefix,
        )

        listed = run_tool(*common)
        assert listed.returncode == 0, listed.stderr
        assert "1 dead letters of group" in listed.stdout  # its own, once
        assert "DELETE FROM" not in listed.stdout  # the consumer takes its claim over
        origin = f"{prefix}loans.repayment.v1"
        assert asyncio.run(records_after(bootstrap, origin, partition, offset)) == []

        applied = run_tool(*common, "--apply")
        assert applied.returncode == 0, applied.stderr
        assert "replayed 1 records" in applied.stdout
        replayed = asyncio.run(records_after(bootstrap, origin, partition, offset))
        assert replayed == [
            (b"loan-7", b'{"amount": "12.50"}', [("ce_id", b"evt-7"), ("ce_type", b"x.v1")])
        ]
    finally:
        asyncio.run(delete_topics(bootstrap, prefix))
