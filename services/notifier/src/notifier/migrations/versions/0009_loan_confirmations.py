"""The loans' balance checks and ledger confirmations, read from the workflow's requests and
ledger-sync's answers: a permit rests on the freshest confirmation of its loan, and a
refusal for want of one says when one is on its way. A permit keeps the confirmation it
was decided on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "loan_confirmations",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("confirmation_id", sa.Text),
        sa.Column("ledger_watermark", sa.BigInteger),
        sa.Column("confirmed_outstanding", sa.Numeric(20, 6)),
        sa.Column("confirmed_at", ts),
        sa.Column("valid_until", ts),
        sa.Column("requested_check_id", sa.Text),
        sa.Column("requested_at", ts),
        sa.Column("answered_check_id", sa.Text),
        sa.Column("asked_at", ts),
        sa.Column("updated_at", ts, nullable=False),
        schema=schema,
    )
    op.add_column("contact_permits", sa.Column("confirmation_id", sa.Text), schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_column("contact_permits", "confirmation_id", schema=schema)
    op.drop_table("loan_confirmations", schema=schema)
