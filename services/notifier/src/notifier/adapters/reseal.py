"""Key rotation: re-seal every personal-data value that is not under the active key.

Rotation is: add the new key to NOTIFIER_PII_KEYS (last, or named by
NOTIFIER_PII_ACTIVE_KID) and roll the pods, so new values are sealed with it while old
ones still open; run ``python -m notifier reseal``; then drop the old key. Each value is
replaced only if it is still the one read (a concurrent write, already under the active
key, wins), so it is safe to run while the service runs.
"""

from __future__ import annotations

import logging

from sqlalchemy import Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.pii import KeyRing
from notifier.adapters.repository import PII_COLUMNS, pii_aad
from notifier.adapters.tables import contact_details, letters, recorded_sends

log = logging.getLogger(__name__)

# (table, row id column, sealed text columns, sealed bytes columns)
SEALED: tuple[tuple[Table, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (contact_details, "borrower_id", PII_COLUMNS, ()),
    (recorded_sends, "command_id", ("address", "subject", "body"), ()),
    (letters, "command_id", ("html",), ("pdf",)),
)


async def reseal(engine: AsyncEngine, ring: KeyRing, *, batch: int = 500) -> int:
    """Re-seal what older keys sealed; returns how many values changed."""
    changed = 0
    for table, key, texts, blobs in SEALED:
        after = ""
        while True:
            async with engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(table.c[key], *(table.c[c] for c in (*texts, *blobs)))
                        .where(table.c[key] > after)
                        .order_by(table.c[key])
                        .limit(batch)
                    )
                ).all()
                for row in rows:
                    row_id = row._mapping[key]
                    for column in (*texts, *blobs):
                        old = row._mapping[column]
                        if old is None or ring.key_id(old) == ring.active:
                            continue
                        aad = pii_aad(table.name, column, row_id)
                        new: str | bytes | None
                        if column in blobs:
                            new = ring.seal_bytes(ring.open_bytes(bytes(old), aad=aad), aad=aad)
                        else:
                            new = ring.seal(ring.open(old, aad=aad), aad=aad)
                        done = await conn.execute(
                            update(table)
                            .where(and_(table.c[key] == row_id, table.c[column] == old))
                            .values({column: new})
                        )
                        changed += int(done.rowcount or 0)
            if len(rows) < batch:
                break
            after = rows[-1]._mapping[key]
    log.info(
        "re-sealed personal data under the active key",
        extra={"values": changed, "kid": ring.active},
    )
    return changed
