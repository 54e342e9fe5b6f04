"""How long a service's inbox remembers what it consumed, and the worker that forgets.

Every consumer claims each event id in its schema's inbox (``collections_kit.consumer``,
ADR 0017): a poll's claims are one row of ``inbox_claims``; claims from before migration
``add_inbox_claims_v1`` are rows of the older ``inbox``. Without pruning both grow for
ever: each claim is a GIN entry that every later claim's lookup shares an index with.

A claim is needed only while a copy of its event can still arrive: from the topic it came
on (retention a week), from the dead-letter topic through ``replay`` (a month, and a
letter's replay may take its claim over), or from a publisher's retry. So the retention is
a setting (``<SERVICE>_INBOX_RETENTION_DAYS``, 45; ``ServiceSettings`` refuses one that
does not exceed the dead-letter topic's 30 days); an older claim is deleted, a pass at a
time, each pass its own short transaction, by every replica (they skip the rows another
is deleting). ADR 0020 says why not partitions.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit import metrics
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker

log = logging.getLogger(__name__)

# Rows deleted per pass and table: a pass holds its row locks for milliseconds, and a
# backlog (the first pass after an upgrade) is worked through pass after pass.
PASS_ROWS = 1000
# A pass an hour: claims age by days, and a pass that finds nothing reads PASS_ROWS rows.
INTERVAL_S = 3600.0

# The oldest PASS_ROWS poll rows by seq (ids are taken at insert, so seq follows time up to
# the overlap of concurrent transactions), of which those claimed before the cutoff. Read
# through the primary key: a pass reads at most PASS_ROWS rows, pruned or not.
_PRUNE_CLAIMS = """
    DELETE FROM "{schema}".inbox_claims WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, claimed_at FROM "{schema}".inbox_claims
            ORDER BY seq LIMIT :rows FOR UPDATE SKIP LOCKED) oldest
        WHERE claimed_at < now() - CAST(:keep AS interval))
    """
# The older row-per-claim inbox is no longer written, so it only shrinks: no index on its
# time is worth adding for it.
_PRUNE_LEGACY = """
    DELETE FROM "{schema}".inbox WHERE ctid IN (
        SELECT ctid FROM "{schema}".inbox WHERE received_at < now() - CAST(:keep AS interval)
        LIMIT :rows FOR UPDATE SKIP LOCKED)
    """


class InboxPruner(RunsOnAPollingWorker):
    """Deletes the claims of ``schema``'s inbox older than ``retention_days``."""

    def __init__(self, engine: AsyncEngine, schema: str, retention_days: int) -> None:
        self._engine = engine
        self._schema = schema
        self._retention = timedelta(days=retention_days)
        self._claims = text(_PRUNE_CLAIMS.format(schema=schema))
        self._legacy = text(_PRUNE_LEGACY.format(schema=schema))
        # The first pass an interval after the start: a restart loop must not prune in a loop.
        self._worker = PollingWorker(
            "inbox pruner", self._prune_pass, interval_s=INTERVAL_S, idle_first=True
        )

    async def _prune_pass(self) -> bool:
        claims, legacy = await self.prune_once()
        return claims >= PASS_ROWS or legacy >= PASS_ROWS

    async def prune_once(self) -> tuple[int, int]:
        """One pass: ``(poll rows, legacy rows)`` deleted. The cutoff is taken on the
        database's clock, the one ``claimed_at`` was written with."""
        params = {"rows": PASS_ROWS, "keep": self._retention}
        async with self._engine.begin() as conn:
            claims = (await conn.execute(self._claims, params)).rowcount
            legacy = (await conn.execute(self._legacy, params)).rowcount
        if claims or legacy:
            metrics.INBOX_PRUNED.labels(self._schema).inc(claims + legacy)
            log.info(
                "inbox pruned",
                extra={"schema": self._schema, "poll_rows": claims, "legacy_rows": legacy},
            )
        return claims, legacy
