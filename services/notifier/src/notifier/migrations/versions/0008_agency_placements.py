"""The cases placed with agencies now, from collections.placements.v1: an agency reads the
contact details only of the borrowers whose cases are placed with it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = schema_of(op)
    op.create_table(
        "agency_placements",
        sa.Column("loan_id", sa.Text, primary_key=True),
        sa.Column("borrower_id", sa.Text, nullable=False),
        sa.Column("agency", sa.Text, nullable=False),
        sa.Column("placement_id", sa.Text, nullable=False),
        sa.Column("running", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index(
        "ix_agency_placements_borrower",
        "agency_placements",
        ["borrower_id", "agency"],
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("agency_placements", schema=schema_of(op))
