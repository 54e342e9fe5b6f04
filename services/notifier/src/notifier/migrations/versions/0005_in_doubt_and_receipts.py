"""Attempts in doubt (a crash between the hand-over to a channel and its record, on a
channel that cannot be asked) get a status and a decision of their own; delivery receipts
from the providers are kept, once each.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STATUSES = "'pending', 'deferred', 'sending', 'sent', 'failed', 'blocked', 'cancelled'"
_DECISIONS = "'sent', 'deferred', 'blocked', 'cancelled', 'failed'"


def _checks(schema: str, statuses: str, decisions: str) -> None:
    op.drop_constraint("ck_dispatches_status", "dispatches", schema=schema)
    op.create_check_constraint("ck_dispatches_status", "dispatches",
                               f"status IN ({statuses})", schema=schema)
    op.drop_constraint("ck_contact_decisions_decision", "contact_decisions", schema=schema)
    op.create_check_constraint("ck_contact_decisions_decision", "contact_decisions",
                               f"decision IN ({decisions})", schema=schema)


def upgrade() -> None:
    schema = schema_of(op)
    _checks(schema, _STATUSES + ", 'in_doubt'", _DECISIONS + ", 'in_doubt'")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "delivery_receipts",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("receipt_id", sa.Text, primary_key=True),
        sa.Column("command_id", sa.Text),
        sa.Column("provider_ref", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("effect", sa.Text, nullable=False),
        sa.Column("occurred_at", ts, nullable=False),
        sa.Column("received_at", ts, nullable=False),
        sa.CheckConstraint("effect IN ('applied', 'late', 'unmatched')",
                           name="ck_delivery_receipts_effect"),
        schema=schema,
    )
    op.create_index("ix_delivery_receipts_command", "delivery_receipts", ["command_id"],
                    schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_table("delivery_receipts", schema=schema)
    # Counted as sent, the worst case the in-doubt attempt stood for.
    op.execute(sa.text(f"UPDATE {schema}.dispatches SET status = 'sent' "
                       "WHERE status = 'in_doubt'"))
    op.execute(sa.text(f"UPDATE {schema}.contact_decisions SET decision = 'sent' "
                       "WHERE decision = 'in_doubt'"))
    _checks(schema, _STATUSES, _DECISIONS)
