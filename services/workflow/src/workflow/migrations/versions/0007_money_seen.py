"""Money facts: repayments seen before a loan's case, and when a case last learnt of money.

``money_seen`` keeps, per loan without a case, the newest repayment or reversal consumed
(topics are consumed independently: after a restart a loan's repayment can be read before
the overdue report that opens its case). The case's opening reads it, so a loan repaid in
the meantime is closed at once instead of at the next balance re-check. One row per loan,
removed when the case opens, and pruned after a retention period (timer worker): the table
holds the loans that repaid lately without being in collections, no more.

``cases.money_applied_at`` is when the case last applied a repayment or reversal: a balance
confirmation asked for before then must not set the outstanding back.

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


def upgrade() -> None:
    schema = schema_of(op)
    op.create_table(
        "money_seen",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("repayment_id", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(20, 6), nullable=False),
        sa.Column("outstanding_after", sa.Numeric(20, 6), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema)
    op.create_index("ix_money_seen_seen_at", "money_seen", ["seen_at"], schema=schema)
    op.add_column("cases", sa.Column("money_applied_at", sa.DateTime(timezone=True)),
                  schema=schema)


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_column("cases", "money_applied_at", schema=schema)
    op.drop_table("money_seen", schema=schema)
