"""Personal data sealed at rest: contact details, recorded sends and letters are encrypted
(AES-256-GCM, collections_kit.pii) with the key ring from NOTIFIER_PII_KEYS; rows stored
in clear before this revision are sealed here, and CHECK constraints make the database
refuse clear text in those columns from now on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (table, row id column, sealed text columns, sealed bytes columns)
SEALED: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("contact_details", "borrower_id",
     ("email", "phone", "postal_address", "guarantor_name", "guarantor_email",
      "guarantor_phone", "guarantor_postal_address"), ()),
    ("recorded_sends", "command_id", ("address", "subject", "body"), ()),
    ("letters", "command_id", ("html",), ("pdf",)),
)


def _ring() -> Any:
    # The keys the service itself runs with: migrate reads the same environment.
    from notifier.settings import NotifierSettings

    return NotifierSettings().key_ring()


def _convert(schema: str, *, seal: bool) -> None:
    conn = op.get_bind()
    ring = None
    for table, key, texts, blobs in SEALED:
        columns = [key, *texts, *blobs]
        rows = conn.execute(sa.text(
            f'SELECT {", ".join(columns)} FROM "{schema}".{table}')).mappings().all()
        for row in rows:
            changes: dict[str, Any] = {}
            for column in texts:
                value = row[column]
                aad = f"{table}.{column}:{row[key]}"
                if value is None or value.startswith("pii1:") == seal:
                    continue
                ring = ring or _ring()
                changes[column] = ring.seal(value, aad=aad) if seal else ring.open(value,
                                                                                 aad=aad)
            for column in blobs:
                value = bytes(row[column])
                aad = f"{table}.{column}:{row[key]}"
                if value.startswith(b"pii1:") == seal:
                    continue
                ring = ring or _ring()
                changes[column] = (ring.seal_bytes(value, aad=aad) if seal
                                   else ring.open_bytes(value, aad=aad))
            if changes:
                assignments = ", ".join(f"{c} = :{c}" for c in changes)
                conn.execute(sa.text(
                    f'UPDATE "{schema}".{table} SET {assignments} WHERE {key} = :row_key'),
                    {**changes, "row_key": row[key]})


def upgrade() -> None:
    schema = schema_of(op)
    _convert(schema, seal=True)
    for table, _, texts, blobs in SEALED:
        for column in texts:
            op.create_check_constraint(
                f"ck_{table}_{column}_sealed", table,
                f"{column} IS NULL OR {column} LIKE 'pii1:%'", schema=schema)
        for column in blobs:
            op.create_check_constraint(
                f"ck_{table}_{column}_sealed", table,
                f"substring({column} from 1 for 5) = 'pii1:'::bytea", schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    for table, _, texts, blobs in SEALED:
        for column in (*texts, *blobs):
            op.drop_constraint(f"ck_{table}_{column}_sealed", table, schema=schema)
    _convert(schema, seal=False)
