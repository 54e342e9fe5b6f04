"""Full lifecycle: holds, arrangements, stage epochs, durable timers, idempotency keys.

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
    for column in (
        sa.Column("stage_epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("stage_entered_at", ts),
        sa.Column("outstanding_at_stage_entry", sa.Numeric(20, 6)),
        sa.Column("hold", JSONB),
        sa.Column("arrangement", JSONB),
        sa.Column("unanswered_contacts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("milestones", JSONB, nullable=False, server_default="[]"),
        sa.Column("next_action_at", ts),
    ):
        op.add_column("cases", column, schema=schema)
    # Keyset pagination and the list filters read these.
    op.create_index("ix_cases_next_action_at", "cases", ["next_action_at"], schema=schema)
    op.create_index("ix_cases_dpd", "cases", ["days_past_due"], schema=schema)
    op.add_column("contact_intents",
                  sa.Column("check_id", sa.Text, nullable=False, server_default=""),
                  schema=schema)
    op.add_column("contact_intents",
                  sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
                  schema=schema)
    op.execute(f'UPDATE "{schema}".contact_intents SET check_id = intent_id WHERE check_id = \'\'')
    op.create_index("ix_contact_intents_check_id", "contact_intents", ["check_id"],
                    schema=schema)
    op.create_index("ix_contact_intents_case", "contact_intents", ["case_id"], schema=schema)
    op.create_table(
        "timers",
        sa.Column("timer_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("due_at", ts, nullable=False),
        sa.Column("fired_at", ts),
        sa.Column("outcome", sa.Text),
        schema=schema,
    )
    # The firing query reads only unfired timers, oldest due first.
    op.create_index("ix_timers_due_unfired", "timers", ["due_at"], schema=schema,
                    postgresql_where=sa.text("fired_at IS NULL"))
    op.create_index("ix_timers_case", "timers", ["case_id"], schema=schema)
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("body", JSONB),
        sa.Column("created_at", ts, nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_table("idempotency_keys", schema=schema)
    op.drop_table("timers", schema=schema)
    op.drop_index("ix_contact_intents_case", "contact_intents", schema=schema)
    op.drop_index("ix_contact_intents_check_id", "contact_intents", schema=schema)
    op.drop_column("contact_intents", "attempts", schema=schema)
    op.drop_column("contact_intents", "check_id", schema=schema)
    op.drop_index("ix_cases_dpd", "cases", schema=schema)
    op.drop_index("ix_cases_next_action_at", "cases", schema=schema)
    for column in ("next_action_at", "milestones", "unanswered_contacts", "arrangement", "hold",
                   "outstanding_at_stage_entry", "stage_entered_at", "stage_epoch"):
        op.drop_column("cases", column, schema=schema)
