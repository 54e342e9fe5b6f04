"""Placements by agency: the per-agency report reads all of an agency's placements.

``GET /v1/agencies/{agency}/performance`` counts an agency's placements active and ended,
its recalls by reason and the balance placed with it, from the placements table itself
(no counters): one index on agency and currency serves it, ended placements included
(``ix_placements_agency_running`` covers only the running ones the agency lists).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_placements_agency", "placements", ["agency", "currency"], schema=schema_of(op)
    )


def downgrade() -> None:
    op.drop_index("ix_placements_agency", table_name="placements", schema=schema_of(op))
