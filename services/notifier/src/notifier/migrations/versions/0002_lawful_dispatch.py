"""Lawful dispatch: contact attempts (frequency caps), validation notices, case holds and
closures, opt-outs and do-not-contact, rendered letters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "contact_attempts",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("person", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("number_key", sa.Text),
        sa.Column("attempted_at", ts, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("settles_by", ts),
        sa.Column("provider_ref", sa.Text),
        sa.Column("updated_at", ts, nullable=False),
        sa.CheckConstraint(
            "result IN ('pending', 'sent', 'delivered', 'answered', 'unanswered', 'failed', "
            "'unknown')", name="ck_contact_attempts_result"),
        schema=schema,
    )
    op.create_index("ix_contact_attempts_person", "contact_attempts",
                    ["person", "attempted_at"], schema=schema)
    op.create_index("ix_contact_attempts_number", "contact_attempts",
                    ["number_key", "attempted_at"], schema=schema,
                    postgresql_where=sa.text("number_key IS NOT NULL"))
    op.create_table(
        "validation_notices",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("person", sa.Text, primary_key=True),
        sa.Column("command_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("sent_at", ts),
        sa.Column("dispute_by", ts),
        sa.Column("updated_at", ts, nullable=False),
        sa.CheckConstraint("status IN ('in_flight', 'sent')",
                           name="ck_validation_notices_status"),
        schema=schema,
    )
    op.create_table(
        "case_holds",
        sa.Column("hold_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("held_at", ts, nullable=False),
        sa.Column("until", ts),
        sa.Column("resumed_at", ts),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_case_holds_loan", "case_holds", ["loan_id"], schema=schema)
    op.create_table(
        "case_closures",
        sa.Column("case_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("closed_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_case_closures_loan", "case_closures", ["loan_id"], schema=schema)
    op.create_table(
        "channel_opt_outs",
        sa.Column("borrower_id", sa.Text, primary_key=True),
        sa.Column("party", sa.Text, primary_key=True),
        sa.Column("channel", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "do_not_contact",
        sa.Column("borrower_id", sa.Text, primary_key=True),
        sa.Column("party", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", ts, nullable=False),
        schema=schema,
    )
    op.create_table(
        "letters",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("pdf", sa.LargeBinary, nullable=False),
        sa.Column("pdf_sha256", sa.Text, nullable=False),
        sa.Column("rendered_at", ts, nullable=False),
        schema=schema,
    )
    op.create_index("ix_letters_loan", "letters", ["loan_id"], schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    for table in ("letters", "do_not_contact", "channel_opt_outs", "case_closures",
                  "case_holds", "validation_notices", "contact_attempts"):
        op.drop_table(table, schema=schema)
