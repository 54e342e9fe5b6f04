"""The champion-challenger variant a case was assigned at open, kept for life.

Stored, not recomputed: the assignment depends on the shares, and changing the shares
must move no existing case. Existing cases had no variant ("").

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cases",
        sa.Column("variant", sa.Text, nullable=False, server_default=""),
        schema=schema_of(op),
    )


def downgrade() -> None:
    op.drop_column("cases", "variant", schema=schema_of(op))
