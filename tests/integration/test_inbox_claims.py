"""A poll's inbox claims are one row (collections_kit.consumer): the same id claimed by two
transactions at once has one effect (the second waits for the first and finds its claim),
a claim that ended in a handler_failed letter is taken over once, and claims from the
row-per-message inbox still count. Claims older than the retention are pruned, a bounded
pass at a time (collections_kit.inbox_retention)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.consumer import ConsumerLoop, _Item
from collections_kit.envelope import MalformedMessageError
from collections_kit.inbox_retention import PASS_ROWS
from collections_kit.outbox import Tx
from collections_kit.runtime import Runtime
from tests.support import migrate, running
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
async def runtime(
    stack: dict[str, str], database_url: str, topic_prefix: str
) -> AsyncIterator[Runtime]:
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
        }
    )
    await migrate(workflow_boot.MIGRATIONS, database_url, config.db_schema)
    async with running(workflow_boot.build_runtime(config)) as runtime:
        yield runtime


def _item(event_id: str, fingerprint: bytes, *, failed: bool = False) -> _Item:
    error = MalformedMessageError("handler_failed", "boom") if failed else None
    return _Item(None, event_id, None, error, fingerprint)


async def _claim(
    loop: ConsumerLoop, conn: AsyncConnection, items: list[_Item]
) -> tuple[set[str], dict[str, bytes | None]]:
    tx = Tx(conn=conn, now=NOW, source="test", topic_prefix="")
    return await loop._claim(tx, items)


async def test_one_id_claimed_by_two_transactions_at_once_is_fresh_for_one(
    runtime: Runtime,
) -> None:
    loop = runtime.loops[0]
    async with runtime.engine.connect() as first, runtime.engine.connect() as second:
        await first.begin()
        await second.begin()
        assert await _claim(loop, first, [_item("e-1", b"a"), _item("e-2", b"b")]) == (
            {"e-1", "e-2"},
            {},
        )
        later = asyncio.create_task(_claim(loop, second, [_item("e-2", b"b"), _item("e-3", b"c")]))
        await asyncio.sleep(0.3)
        assert not later.done()  # waits for the first transaction's claim of e-2
        await first.commit()
        assert await later == ({"e-3"}, {"e-2": b"b"})
        await second.commit()
    async with runtime.engine.begin() as conn:
        # Each id once, in the poll's row (a row per claiming transaction).
        rows = (
            await conn.execute(text("SELECT event_ids FROM inbox_claims ORDER BY seq"))
        ).scalars()
        assert list(rows) == [["e-1", "e-2"], ["e-3"]]


async def test_a_failed_claim_is_taken_over_once_and_old_inbox_claims_count(
    runtime: Runtime,
) -> None:
    loop = runtime.loops[0]
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO inbox (consumer, event_id, fingerprint) VALUES (:c, 'old', 'x')"),
            {"c": loop._group},
        )
        assert await _claim(loop, conn, [_item("e-9", b"f", failed=True)]) == ({"e-9"}, {})
    async with runtime.engine.begin() as conn:
        # The letter's claim is taken over by the replay, and an old inbox claim is a claim.
        assert await _claim(loop, conn, [_item("e-9", b"g"), _item("old", b"y")]) == (
            {"e-9"},
            {"old": b"x"},
        )
    async with runtime.engine.begin() as conn:
        assert await _claim(loop, conn, [_item("e-9", b"h")]) == (set(), {"e-9": b"g"})


async def test_the_claim_lookup_reads_the_index_however_many_claims_there_are(
    runtime: Runtime,
) -> None:
    """The 1M-case bench collapsed when the planner scanned every claim row (a small heap,
    its arrays out of line) and compared each row's ids with the poll's, pairwise: it costs
    ``&&`` as one operator whatever the arrays hold. The lookup must go through the index."""
    loop = runtime.loops[0]
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO inbox_claims (consumer, event_ids, fingerprints, dead_lettered) "
                "SELECT :c, array_agg('old-' || p || '-' || i), array_agg('\\x00'::bytea), "
                "array_agg(false) FROM generate_series(1, 300) p, generate_series(1, 500) i "
                "GROUP BY p"
            ),
            {"c": loop._group},
        )
        await conn.execute(text("ANALYZE inbox_claims"))
    async with runtime.engine.begin() as conn:
        fresh = [_item(f"new-{i}", b"n") for i in range(500)]
        again = [_item("old-7-7", b"m")]
        assert await _claim(loop, conn, fresh + again) == (
            {f"new-{i}" for i in range(500)},
            {"old-7-7": b"\x00"},
        )
        scans = (
            await conn.execute(
                text(
                    "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                    "WHERE relid = 'inbox_claims'::regclass"
                )
            )
        ).one()
        assert scans.seq_scan == 0
        assert scans.idx_scan >= 1


async def test_claims_past_the_retention_are_pruned_a_bounded_pass_at_a_time(
    runtime: Runtime,
) -> None:
    """45 days by default: the pruner deletes older poll rows and older row-per-message
    claims, never a younger one, at most PASS_ROWS rows of each per pass; every runtime
    runs it (the kit adds it, no bootstrap has to)."""
    loop = runtime.loops[0]
    assert ("inbox", runtime.inbox_pruner) in runtime._named_workers()
    async with runtime.engine.begin() as conn:
        # Old poll rows interleaved with young ones by seq (concurrent claimers' ids and
        # times need not agree), then the young claims of today's polls.
        await conn.execute(
            text(
                "INSERT INTO inbox_claims (consumer, claimed_at, event_ids, fingerprints, "
                "dead_lettered) SELECT :c, now() - CASE WHEN p % 100 = 0 THEN interval '44 days' "
                "ELSE interval '46 days' END, ARRAY['old-' || p], ARRAY['\\x01'::bytea], "
                "ARRAY[false] FROM generate_series(1, :n) p"
            ),
            {"c": loop._group, "n": PASS_ROWS + 50},
        )
        await conn.execute(
            text(
                "INSERT INTO inbox (consumer, event_id, fingerprint, received_at) "
                "SELECT :c, 'legacy-' || p, '\\x02', now() - interval '60 days' "
                "FROM generate_series(1, 3) p"
            ),
            {"c": loop._group},
        )
        await conn.execute(
            text(
                "INSERT INTO inbox (consumer, event_id, fingerprint) VALUES (:c, 'legacy-new', 'x')"
            ),
            {"c": loop._group},
        )
        assert await _claim(loop, conn, [_item("young", b"y")]) == ({"young"}, {})

    # The first pass reads the oldest PASS_ROWS poll rows: 990 of them are old.
    assert await runtime.inbox_pruner.prune_once() == (PASS_ROWS - PASS_ROWS // 100, 3)
    assert await runtime.inbox_pruner._prune_pass() is False  # the 50 left: no more waiting
    assert await runtime.inbox_pruner.prune_once() == (0, 0)
    async with runtime.engine.begin() as conn:
        left = set(
            (await conn.execute(text("SELECT unnest(event_ids) FROM inbox_claims"))).scalars()
        )
        assert left == {f"old-{p}" for p in range(100, PASS_ROWS + 51, 100)} | {"young"}
        legacy = set((await conn.execute(text("SELECT event_id FROM inbox"))).scalars())
        assert legacy == {"legacy-new"}
        # What is kept still counts as a claim; what was pruned is forgotten.
        assert await _claim(loop, conn, [_item("young", b"y"), _item("old-1", b"\x01")]) == (
            {"old-1"},
            {"young": b"y"},
        )
