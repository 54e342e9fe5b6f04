"""Work queues: a case that needs a person becomes a task, leased to one collector at a time.

A borrower is worked by one collector at a time across all their loans: the database
enforces it with a unique index on the borrower of leased tasks, so two collectors asking
for next at the same moment cannot both lease that borrower whatever the code does. A
case has at most one live (open or leased) task of each kind.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("borrower_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        # open | leased | done | withdrawn
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("collector", sa.Text),
        sa.Column("lease_id", sa.Text),
        sa.Column("leased_at", sa.DateTime(timezone=True)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("renewals", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        # The result code (done) or the withdrawal reason (withdrawn).
        sa.Column("outcome", sa.Text),
        sa.Column("detail", JSONB, nullable=False, server_default="{}"),
        schema=schema,
    )
    # "Next": the open tasks of a queue, most urgent (lowest priority number) and oldest first.
    op.create_index(
        "ix_tasks_queue_open",
        "tasks",
        ["queue", "priority", "created_at"],
        postgresql_where=sa.text("status = 'open'"),
        schema=schema,
    )
    op.create_index("ix_tasks_case", "tasks", ["case_id"], schema=schema)
    op.create_index(
        "ix_tasks_lease_until",
        "tasks",
        ["lease_until"],
        postgresql_where=sa.text("status = 'leased'"),
        schema=schema,
    )
    # One borrower, one collector at a time: at most one leased task per borrower.
    op.create_index(
        "ux_tasks_leased_borrower",
        "tasks",
        ["borrower_id"],
        unique=True,
        postgresql_where=sa.text("status = 'leased'"),
        schema=schema,
    )
    # A situation that recurs does not queue the same work twice.
    op.create_index(
        "ux_tasks_live_case_kind",
        "tasks",
        ["case_id", "kind"],
        unique=True,
        postgresql_where=sa.text("status IN ('open', 'leased')"),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("tasks", schema=schema_of(op))
