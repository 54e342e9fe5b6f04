"""Contact permits: a person (collector, agency) asks before each contact, and the result
counts in the same caps as the automated contacts. The attempts say who made them; a
person's call may be "connected" without a conversation (CN counts it, Reg F's quiet week
does not start).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_RESULTS = "'pending', 'sent', 'delivered', 'answered', 'unanswered', 'failed', 'unknown'"


def _results(schema: str, results: str) -> None:
    op.drop_constraint("ck_contact_attempts_result", "contact_attempts", schema=schema)
    op.create_check_constraint("ck_contact_attempts_result", "contact_attempts",
                               f"result IN ({results})", schema=schema)


def upgrade() -> None:
    schema = schema_of(op)
    _results(schema, _RESULTS + ", 'connected'")
    op.add_column("contact_attempts",
                  sa.Column("actor_kind", sa.Text, nullable=False, server_default="system"),
                  schema=schema)
    op.add_column("contact_attempts", sa.Column("actor_id", sa.Text), schema=schema)
    op.create_check_constraint("ck_contact_attempts_actor_kind", "contact_attempts",
                               "actor_kind IN ('system', 'collector', 'agency')", schema=schema)
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "contact_permits",
        sa.Column("permit_id", sa.Text, primary_key=True),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("actor_kind", sa.Text, nullable=False),
        sa.Column("actor_id", sa.Text, nullable=False),
        # Where the actor came from: the token, or the body (a delegate names it).
        sa.Column("actor_kind_from", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("policy_version", sa.Text, nullable=False),
        # The contact command whose case and ledger confirmation the permit rested on.
        sa.Column("anchor_command_id", sa.Text),
        sa.Column("asked_at", ts, nullable=False),
        sa.Column("expires_at", ts),
        sa.Column("result_by", ts),
        sa.Column("retry_after", ts),
        sa.Column("result", sa.Text),
        sa.Column("result_at", ts),
        sa.CheckConstraint("decision IN ('granted', 'refused')", name="ck_contact_permits_decision"),
        sa.CheckConstraint("actor_kind IN ('collector', 'agency')",
                           name="ck_contact_permits_actor_kind"),
        sa.CheckConstraint("result IS NULL OR result IN ('connected', 'unanswered', "
                           "'conversation')", name="ck_contact_permits_result"),
        schema=schema,
    )
    op.create_index("ix_contact_permits_loan", "contact_permits", ["loan_id", "asked_at"],
                    schema=schema)
    op.create_index("ix_contact_permits_decision_reason", "contact_permits",
                    ["decision", "reason"], schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_table("contact_permits", schema=schema)
    op.drop_constraint("ck_contact_attempts_actor_kind", "contact_attempts", schema=schema)
    op.drop_column("contact_attempts", "actor_id", schema=schema)
    op.drop_column("contact_attempts", "actor_kind", schema=schema)
    # A call that connected counts as answered, the worst case it stood for.
    op.execute(sa.text(f"UPDATE {schema}.contact_attempts SET result = 'answered' "
                       "WHERE result = 'connected'"))
    _results(schema, _RESULTS)
