"""The outbox relay keeps its position in a row of its own (`outbox_relayed`) and
truncates relayed rows together, instead of deleting each one as it is published (a
DELETE is a second write of every row). See collections_kit.outbox.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from alembic import op

from collections_kit.migration_ops import (
    add_outbox_relayed_v1,
    drop_outbox_relayed_v1,
    schema_of,
)

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_outbox_relayed_v1(op, schema_of(op))


def downgrade() -> None:
    drop_outbox_relayed_v1(op, schema_of(op))
