"""Ledger projection, buffered postings, repayments in flight, balance answers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import create_plumbing_v1, drop_plumbing_v1, schema_of

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    create_plumbing_v1(op, schema)
    ts = sa.DateTime(timezone=True)
    money = sa.Numeric(20, 6)
    op.create_table(
        "loan_balances",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("balance", money, nullable=False),
        sa.Column("watermark", sa.Integer, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "buffered_postings",
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("posting_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount", money, nullable=False),
        sa.Column("booked_at", ts, nullable=False),
        sa.Column("repayment_id", sa.Text),
        sa.PrimaryKeyConstraint("loan_id", "sequence"),
        schema=schema,
    )
    op.create_table(
        "repayments",
        sa.Column("repayment_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("amount", money),
        sa.Column("received_at", ts),
        sa.Column("booked", sa.Boolean, nullable=False),
        sa.Column("reversed", sa.Boolean, nullable=False),
        schema=schema,
    )
    op.create_index("ix_repayments_loan_id", "repayments", ["loan_id"], schema=schema)
    op.create_table(
        "balance_answers",
        sa.Column("check_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("answer_type", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("answered_at", ts, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    schema = schema_of(op)
    for table in ("balance_answers", "repayments", "buffered_postings", "loan_balances"):
        op.drop_table(table, schema=schema)
    drop_plumbing_v1(op, schema)
