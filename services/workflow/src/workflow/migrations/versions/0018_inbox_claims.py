"""A poll's inbox claims in one row (`inbox_claims`: the ids, their fingerprints and
dead-letter flags as arrays, the ids found through a GIN index) instead of a row per
message. The `inbox` table's claims are still read. See collections_kit.consumer.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from alembic import op

from collections_kit.migration_ops import (
    add_inbox_claims_v1,
    drop_inbox_claims_v1,
    schema_of,
)

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_inbox_claims_v1(op, schema_of(op))


def downgrade() -> None:
    drop_inbox_claims_v1(op, schema_of(op))
