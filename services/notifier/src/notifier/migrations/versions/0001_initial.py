"""Dispatches, decisions, cancellations, repayments, contact details, recorded sends,
inbox and outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

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
        "dispatches",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("intent_id", sa.Text, nullable=False),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("borrower_id", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount_due", sa.Numeric(20, 6), nullable=False),
        sa.Column("confirmation_id", sa.Text, nullable=False),
        sa.Column("ledger_watermark", sa.BigInteger, nullable=False),
        sa.Column("confirmed_at", ts, nullable=False),
        sa.Column("confirmation_valid_until", ts, nullable=False),
        sa.Column("borrower_time_zone", sa.Text, nullable=False),
        sa.Column("jurisdiction", sa.Text, nullable=False),
        sa.Column("issued_at", ts, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("due_at", ts, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("decision_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("rule", sa.Text, nullable=False, server_default=""),
        sa.Column("last_error", sa.Text),
        sa.Column("received_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'deferred', 'sending', 'sent', 'failed', 'blocked', "
            "'cancelled')", name="ck_dispatches_status"),
        schema=schema,
    )
    # The dispatcher's claim (open rows by due_at) reads only the small open part.
    op.create_index("ix_dispatches_due", "dispatches", ["due_at"], schema=schema,
                    postgresql_where=sa.text("status IN ('pending', 'deferred', 'sending')"))
    op.create_index("ix_dispatches_loan_status", "dispatches", ["loan_id", "status"],
                    schema=schema)
    op.create_table(
        "contact_decisions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("command_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("policy_version", sa.Text, nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("due_at", ts),
        sa.UniqueConstraint("command_id", "seq", name="uq_contact_decisions_command_seq"),
        sa.CheckConstraint(
            "decision IN ('sent', 'deferred', 'blocked', 'cancelled', 'failed')",
            name="ck_contact_decisions_decision"),
        schema=schema,
    )
    op.create_index("ix_contact_decisions_loan", "contact_decisions", ["loan_id", "id"],
                    schema=schema)
    op.create_index("ix_contact_decisions_decision_reason", "contact_decisions",
                    ["decision", "reason"], schema=schema)
    op.create_table(
        "loan_cancellations",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("cancelled_at", ts, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "command_cancellations",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("cancelled_at", ts, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        schema=schema,
    )
    op.create_table(
        "repayments",
        sa.Column("repayment_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(20, 6), nullable=False),
        sa.Column("received_at", ts),
        sa.Column("reversed_at", ts),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_repayments_loan_received", "repayments", ["loan_id", "received_at"],
                    schema=schema)
    op.create_table(
        "contact_details",
        sa.Column("borrower_id", sa.Text, primary_key=True),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("postal_address", sa.Text),
        sa.Column("guarantor_name", sa.Text),
        sa.Column("guarantor_email", sa.Text),
        sa.Column("guarantor_phone", sa.Text),
        sa.Column("guarantor_postal_address", sa.Text),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "recorded_sends",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("recorded_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_recorded_sends_loan", "recorded_sends", ["loan_id"], schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    for table in ("recorded_sends", "contact_details", "repayments", "command_cancellations",
                  "loan_cancellations", "contact_decisions", "dispatches"):
        op.drop_table(table, schema=schema)
    drop_plumbing_v1(op, schema)
