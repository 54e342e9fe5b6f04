"""The arrangement that ended last stays on the case, with its outcome (kept, completed,
broken, repaid, cancelled) and what was paid towards it: after a promise was kept the case's
``arrangement`` is empty again, and what was promised and paid could not be read back.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("last_arrangement", JSONB), schema=schema_of(op))


def downgrade() -> None:
    op.drop_column("cases", "last_arrangement", schema=schema_of(op))
