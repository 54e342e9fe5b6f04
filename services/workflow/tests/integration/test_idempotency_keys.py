"""The REST writes' idempotency keys are forgotten past their retention, oldest first, a
bounded batch at a time (migration 0022's index on ``created_at``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, text

from collections_kit.runtime import Runtime
from workflow.adapters.idempotency import IdempotencyKeyRepository
from workflow.adapters.tables import idempotency_keys


async def test_keys_older_than_the_cutoff_are_pruned_oldest_first_within_the_limit(
    workflow: Runtime,
) -> None:
    async with workflow.engine.begin() as conn:
        now = await conn.scalar(select(func.now()))
        assert isinstance(now, datetime)
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (key, request_hash, status, body, created_at) "
                "SELECT 'old-' || d, 'h', 200, '{}'::jsonb, now() - d * interval '1 day' "
                "FROM generate_series(31, 35) d"
            )
        )
        keys = IdempotencyKeyRepository(conn)
        assert await keys.claim("young", "h")
        cutoff = now - timedelta(days=30)
        # The two oldest first, then the rest; the young key stays.
        assert await keys.prune(cutoff, limit=2) == 2
        left = set((await conn.execute(select(idempotency_keys.c.key))).scalars())
        assert left == {"old-31", "old-32", "old-33", "young"}
        assert await keys.prune(cutoff) == 3
        assert await keys.prune(cutoff) == 0
        assert set((await conn.execute(select(idempotency_keys.c.key))).scalars()) == {"young"}
        # Forgotten: the key can be claimed again, by a new request.
        assert await keys.claim("old-35", "other")
