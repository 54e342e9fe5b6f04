"""A lease runs out once: at most one ``task_lease_expired`` timeline entry per lease.

A lease that runs out is returned to its queue by whichever comes first, the lease sweeper
or a collector's "next"; both lock the task ``SKIP LOCKED``, so only one of them returns
it. This makes "the timeline shows the lease expiring once" the database's rule too: the
entry carries the lease's id, unique among expiry entries (entries written before this
migration carry none, and NULLs do not collide).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ux_timeline_lease_expired",
        "timeline",
        [sa.text("(detail->>'lease_id')")],
        unique=True,
        postgresql_where=sa.text("kind = 'task_lease_expired'"),
        schema=schema_of(op),
    )


def downgrade() -> None:
    op.drop_index("ux_timeline_lease_expired", table_name="timeline", schema=schema_of(op))
