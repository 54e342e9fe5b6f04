"""Idempotency keys of REST writes in PostgreSQL: claimed with the change, answer kept."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from workflow.adapters.tables import idempotency_keys
from workflow.app.ports import KeptAnswer


class IdempotencyKeyRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim(self, key: str, request_hash: str) -> bool:
        """Claim ``key`` for this request; False if it was claimed before.

        A concurrent request with the same key waits on the row until the first one's
        transaction ends, then finds it claimed (and its answer kept)."""
        claimed = await self._conn.scalar(
            pg_insert(idempotency_keys)
            .values(key=key, request_hash=request_hash)
            .on_conflict_do_nothing()
            .returning(idempotency_keys.c.key)
        )
        return claimed is not None

    async def kept(self, key: str) -> KeptAnswer:
        """The request a claimed key was used for, and the answer it got."""
        row = (
            await self._conn.execute(select(idempotency_keys).where(idempotency_keys.c.key == key))
        ).one()
        return KeptAnswer(row.request_hash, int(row.status), dict(row.body))

    async def keep(self, key: str, status: int, body: dict[str, Any]) -> None:
        """Keep the answer to the request that claimed ``key``, for its retries."""
        await self._conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == key)
            .values(status=status, body=body)
        )

    async def prune(self, before: datetime, *, limit: int = 10_000) -> int:
        """Forget keys claimed before ``before`` (at most ``limit`` of them: the oldest, by
        the index on ``created_at``), with the answers kept for their retries."""
        oldest = (
            select(idempotency_keys.c.key)
            .where(idempotency_keys.c.created_at < before)
            .order_by(idempotency_keys.c.created_at)
            .limit(limit)
            .scalar_subquery()
        )
        result = await self._conn.execute(
            delete(idempotency_keys).where(idempotency_keys.c.key.in_(oldest))
        )
        return int(result.rowcount or 0)
