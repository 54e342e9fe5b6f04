"""An operator may order a contact in doubt sent again: the order is a decision of its own
(``resend_ordered``) in the audit trail, with who ordered it and why.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_DECISIONS = "'sent', 'deferred', 'blocked', 'cancelled', 'failed', 'in_doubt'"


def _check(schema: str, decisions: str) -> None:
    op.drop_constraint("ck_contact_decisions_decision", "contact_decisions", schema=schema)
    op.create_check_constraint("ck_contact_decisions_decision", "contact_decisions",
                               f"decision IN ({decisions})", schema=schema)


def upgrade() -> None:
    _check(schema_of(op), _DECISIONS + ", 'resend_ordered'")


def downgrade() -> None:
    schema = schema_of(op)
    op.execute(sa.text(f"DELETE FROM {schema}.contact_decisions "
                       "WHERE decision = 'resend_ordered'"))
    _check(schema, _DECISIONS)
