"""Cases, contact intents, timeline, inbox and outbox.

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
    op.create_table(
        "cases",
        sa.Column("case_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False, unique=True),
        sa.Column("borrower_id", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("exit", sa.Text),
        sa.Column("outstanding", sa.Numeric(20, 6), nullable=False),
        sa.Column("amount_overdue", sa.Numeric(20, 6), nullable=False),
        sa.Column("days_past_due", sa.Integer, nullable=False),
        sa.Column("last_overdue_as_of", ts, nullable=False),
        sa.Column("borrower_time_zone", sa.Text, nullable=False),
        sa.Column("jurisdiction", sa.Text, nullable=False),
        sa.Column("policy_version", sa.Text, nullable=False),
        sa.Column("opened_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_cases_stage_status", "cases", ["status", "stage"], schema=schema)
    op.create_table(
        "contact_intents",
        sa.Column("intent_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("command_id", sa.Text),
        sa.Column("confirmation_id", sa.Text),
        sa.Column("created_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_contact_intents_loan_status", "contact_intents",
                    ["loan_id", "status"], schema=schema)
    op.create_table(
        "timeline",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("stage_before", sa.Text),
        sa.Column("stage_after", sa.Text),
        sa.Column("status_before", sa.Text),
        sa.Column("status_after", sa.Text),
        sa.Column("policy_version", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False),
        schema=schema,
    )
    op.create_index("ix_timeline_case", "timeline", ["case_id", "id"], schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    for table in ("timeline", "contact_intents", "cases"):
        op.drop_table(table, schema=schema)
    drop_plumbing_v1(op, schema)
