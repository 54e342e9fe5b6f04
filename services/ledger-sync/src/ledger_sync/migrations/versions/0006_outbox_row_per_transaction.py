"""The outbox holds a transaction's messages in one row (`topics`, `keys`, `payloads`,
`header_sets`: arrays in the order staged) instead of a row per message; rows waiting at
the upgrade become rows of one message each. See collections_kit.outbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op

from collections_kit.migration_ops import (
    outbox_row_per_message_v1,
    outbox_rows_per_transaction_v1,
    schema_of,
)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    outbox_rows_per_transaction_v1(op, schema_of(op))


def downgrade() -> None:
    outbox_row_per_message_v1(op, schema_of(op))
