"""Ledger API fallback and reconciliation: verified_at, pending checks, open cases,
collections views, reconciliation runs and findings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    ts = sa.DateTime(timezone=True)
    money = sa.Numeric(20, 6)
    # Nullable, no default: adding it rewrites nothing, existing rows count from updated_at.
    op.add_column("loan_balances", sa.Column("verified_at", ts), schema=schema)
    op.create_table(
        "pending_checks",
        sa.Column("check_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("queued_at", ts, nullable=False),
        sa.Column("claimed_until", ts),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        schema=schema,
    )
    op.create_index("ix_pending_checks_loan_id", "pending_checks", ["loan_id"], schema=schema)
    op.create_table(
        "open_cases",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("opened_at", ts, nullable=False),
        sa.Column("last_correction_kind", sa.Text),
        sa.Column("last_correction_outstanding", money),
        sa.Column("last_correction_watermark", sa.Integer),
        schema=schema,
    )
    op.create_table(
        "collections_views",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("outstanding", money, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "reconciliation_runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("finished_at", ts),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("examined", sa.Integer, nullable=False, server_default="0"),
        sa.Column("counts", JSONB, nullable=False),
        schema=schema,
    )
    op.create_index("ix_reconciliation_runs_started_at", "reconciliation_runs",
                    ["started_at"], schema=schema)
    op.create_table(
        "reconciliation_findings",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("currency", sa.Text),
        sa.Column("collections_outstanding", money),
        sa.Column("ledger_outstanding", money),
        sa.Column("ledger_watermark", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "loan_id"),
        schema=schema,
    )


def downgrade() -> None:
    schema = schema_of(op)
    for table in ("reconciliation_findings", "reconciliation_runs", "collections_views",
                  "open_cases", "pending_checks"):
        op.drop_table(table, schema=schema)
    op.drop_column("loan_balances", "verified_at", schema=schema)
