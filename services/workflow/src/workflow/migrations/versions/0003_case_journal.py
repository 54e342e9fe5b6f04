"""The case journal: every applied input, for replay and audit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    op.create_table(
        "case_inputs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause_id", sa.Text, nullable=False),
        sa.Column("input_type", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        schema=schema,
    )
    op.create_index("ix_case_inputs_case", "case_inputs", ["case_id", "id"], schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_table("case_inputs", schema=schema)
