"""Migration steps shared by the services' Alembic trees.

Each function is a frozen, versioned step: change the tables through a new function,
never by editing an old one, because applied migrations must stay reproducible.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB


def schema_of(op: Any) -> str:
    """The schema the service's migration runs for (set by ``collections_kit.migrate``)."""
    schema: str = op.get_context().config.attributes["schema"]
    return schema


def create_plumbing_v1(op: Any, schema: str) -> None:
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
        schema=schema,
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )


def drop_plumbing_v1(op: Any, schema: str) -> None:
    op.drop_table("outbox", schema=schema)
    op.drop_table("inbox", schema=schema)


def add_inbox_fingerprint_v1(op: Any, schema: str) -> None:
    """The inbox remembers what it claimed: a fingerprint of the payload (so a redelivered
    id with another payload is told apart from a plain duplicate) and whether the claim
    ended in a dead letter (so a replay of that letter may take the claim over). Nullable
    and a constant default: adding them rewrites no row; old claims have no fingerprint."""
    op.add_column("inbox", sa.Column("fingerprint", sa.LargeBinary), schema=schema)
    op.add_column(
        "inbox",
        sa.Column("dead_lettered", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=schema,
    )


def drop_inbox_fingerprint_v1(op: Any, schema: str) -> None:
    op.drop_column("inbox", "dead_lettered", schema=schema)
    op.drop_column("inbox", "fingerprint", schema=schema)


def add_outbox_relayed_v1(op: Any, schema: str) -> None:
    """The relay's position in the outbox (one row): relayed rows stay until the relay
    truncates them together, instead of a DELETE per row. Starts at 0: every row present
    when this runs is still to be relayed (relayed ones were deleted)."""
    op.create_table(
        "outbox_relayed",
        sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("relayed_to", sa.BigInteger, nullable=False),
        sa.CheckConstraint("one", name="outbox_relayed_one_row"),
        schema=schema,
    )
    op.execute(f'INSERT INTO "{schema}".outbox_relayed (relayed_to) VALUES (0)')


def drop_outbox_relayed_v1(op: Any, schema: str) -> None:
    """Back to deleting each relayed row: those already relayed go now."""
    op.execute(
        f'DELETE FROM "{schema}".outbox WHERE id <= '
        f'(SELECT relayed_to FROM "{schema}".outbox_relayed)'
    )
    op.drop_table("outbox_relayed", schema=schema)


def add_inbox_claims_v1(op: Any, schema: str) -> None:
    """A poll's claims in one row instead of a row per message (collections_kit.consumer).
    The ``inbox`` table stays: its claims are still read, no longer written."""
    op.create_table(
        "inbox_claims",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column(
            "claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("event_ids", ARRAY(sa.Text), nullable=False),
        sa.Column("fingerprints", ARRAY(sa.LargeBinary), nullable=False),
        sa.Column("dead_lettered", ARRAY(sa.Boolean), nullable=False),
        schema=schema,
    )
    op.create_index(
        "ix_inbox_claims_event_ids",
        "inbox_claims",
        ["event_ids"],
        postgresql_using="gin",
        schema=schema,
    )


def drop_inbox_claims_v1(op: Any, schema: str) -> None:
    """Back to a row per claim: the batch rows' claims move into ``inbox`` (the latest of
    each id)."""
    op.execute(
        f"""INSERT INTO "{schema}".inbox (consumer, event_id, fingerprint, dead_lettered)
        SELECT DISTINCT ON (b.consumer, c.event_id) b.consumer, c.event_id, c.fingerprint,
               c.dead_lettered
        FROM "{schema}".inbox_claims b,
             unnest(b.event_ids, b.fingerprints, b.dead_lettered)
             AS c(event_id, fingerprint, dead_lettered)
        ORDER BY b.consumer, c.event_id, b.seq DESC
        ON CONFLICT (consumer, event_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
            dead_lettered = EXCLUDED.dead_lettered"""
    )
    op.drop_table("inbox_claims", schema=schema)


def add_inbox_claims_lookup_v1(op: Any, schema: str) -> None:
    """The claim lookup as a function that always reads the GIN index, which also stops
    buffering its entries (``fastupdate``).

    The planner costs ``&&`` as one operator, but overlapping two 500-id arrays is some
    250,000 comparisons; the claim rows' heap is small (their arrays live out of line), so
    it chose to scan every row, and each poll's claim grew with every claim ever made (the
    1M-case bench stalled). ``enable_seqscan = off`` for the function's own query only
    keeps the index in use whatever the statistics say. Without ``fastupdate`` each search
    reads the index alone, not also a pending list of up to 4 MB, and no insert pays for
    merging that list mid-poll."""
    op.execute(f'ALTER INDEX "{schema}".ix_inbox_claims_event_ids SET (fastupdate = off)')
    op.execute(f"SELECT gin_clean_pending_list('\"{schema}\".ix_inbox_claims_event_ids')")
    op.execute(
        f"""CREATE FUNCTION "{schema}".inbox_claims_of(claimer text, ids text[])
        RETURNS TABLE (event_id text, fingerprint bytea, dead_lettered boolean, seq bigint)
        LANGUAGE sql STABLE
        SET enable_seqscan = off
        AS $$
            SELECT c.event_id, c.fingerprint, c.dead_lettered, b.seq
            FROM "{schema}".inbox_claims b,
                 unnest(b.event_ids, b.fingerprints, b.dead_lettered)
                 AS c(event_id, fingerprint, dead_lettered)
            WHERE b.consumer = $1 AND b.event_ids && $2 AND c.event_id = ANY($2)
        $$"""
    )


def drop_inbox_claims_lookup_v1(op: Any, schema: str) -> None:
    op.execute(f'DROP FUNCTION "{schema}".inbox_claims_of(text, text[])')
    op.execute(f'ALTER INDEX "{schema}".ix_inbox_claims_event_ids RESET (fastupdate)')


def outbox_rows_per_transaction_v1(op: Any, schema: str) -> None:
    """The outbox holds a transaction's messages in one row (arrays in staging order);
    rows waiting at the upgrade become rows of one message each, in their order."""
    t = f'"{schema}".outbox'
    op.execute(
        f"ALTER TABLE {t} ADD COLUMN topics text[], ADD COLUMN keys bytea[], "
        "ADD COLUMN payloads bytea[], ADD COLUMN header_sets jsonb"
    )
    op.execute(
        f"UPDATE {t} SET topics = ARRAY[topic], keys = ARRAY[key], payloads = ARRAY[value], "
        "header_sets = jsonb_build_array(headers)"
    )
    op.execute(
        f"ALTER TABLE {t} ALTER COLUMN topics SET NOT NULL, ALTER COLUMN keys SET NOT NULL, "
        "ALTER COLUMN payloads SET NOT NULL, ALTER COLUMN header_sets SET NOT NULL, "
        "DROP COLUMN topic, DROP COLUMN key, DROP COLUMN value, DROP COLUMN headers"
    )


def outbox_row_per_message_v1(op: Any, schema: str) -> None:
    """Back to a row per message: each waiting transaction's messages become rows, in order."""
    t = f'"{schema}".outbox'
    op.execute(
        f"ALTER TABLE {t} ADD COLUMN topic text, ADD COLUMN key bytea, ADD COLUMN value bytea, "
        "ADD COLUMN headers jsonb"
    )
    op.execute(
        f"INSERT INTO {t} (topic, key, value, headers, created_at, topics, keys, payloads, "
        "header_sets) "
        "SELECT m.topic, m.key, m.value, o.header_sets -> (m.n::int - 1), o.created_at, "
        "'{}', '{}', '{}', '[]' "
        f"FROM {t} o, unnest(o.topics, o.keys, o.payloads) WITH ORDINALITY "
        "AS m(topic, key, value, n) "
        "WHERE o.topic IS NULL ORDER BY o.id, m.n"
    )
    op.execute(f"DELETE FROM {t} WHERE topic IS NULL")
    op.execute(
        f"ALTER TABLE {t} ALTER COLUMN topic SET NOT NULL, ALTER COLUMN key SET NOT NULL, "
        "ALTER COLUMN value SET NOT NULL, ALTER COLUMN headers SET NOT NULL, "
        "DROP COLUMN topics, DROP COLUMN keys, DROP COLUMN payloads, DROP COLUMN header_sets"
    )
