"""Agency placements and the commission they accrue.

A loan has at most one running placement (``ended_at IS NULL``): the partial unique index
makes "never placed with two agencies at once" the database's rule too. Ended placements
stay, with why they ended: the next placement of the case reads the newest one (back to
the same agency after a hold, on to the next tier after an expiry). One commission row per
repayment made while placed (the repayment id is unique per placement: a redelivery adds
nothing), summed per agency over REST.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    op.create_table(
        "placements",
        sa.Column("placement_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("agency", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("tier_index", sa.Integer, nullable=False),
        sa.Column("commission_rate", sa.Numeric(9, 6), nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_placed", sa.Numeric(20, 6), nullable=False),
        sa.Column("policy_version", sa.Text, nullable=False),
        sa.Column("collected", sa.Numeric(20, 6), nullable=False),
        sa.Column("commission", sa.Numeric(20, 6), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.Text),
        schema=schema,
    )
    op.create_index(
        "ux_placements_running_loan",
        "placements",
        ["loan_id"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
        schema=schema,
    )
    op.create_index("ix_placements_loan", "placements", ["loan_id", "placed_at"], schema=schema)
    op.create_index(
        "ix_placements_agency_running",
        "placements",
        ["agency", "loan_id"],
        postgresql_where=sa.text("ended_at IS NULL"),
        schema=schema,
    )
    op.create_table(
        "placement_commissions",
        sa.Column("placement_id", sa.Text, primary_key=True),
        sa.Column("repayment_id", sa.Text, primary_key=True),
        sa.Column("agency", sa.Text, nullable=False),
        sa.Column("loan_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(20, 6), nullable=False),
        sa.Column("commission", sa.Numeric(20, 6), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index(
        "ix_placement_commissions_agency",
        "placement_commissions",
        ["agency", "currency"],
        schema=schema,
    )


def downgrade() -> None:
    schema = schema_of(op)
    op.drop_table("placement_commissions", schema=schema)
    op.drop_table("placements", schema=schema)
