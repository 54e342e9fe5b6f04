"""Refused proposals count on the case: when they were refused, within the negotiation
policy's period. Enough of them make the proposal "unreasonable" by the policy's own rule
(domain/negotiation.py), so the count must survive between requests; a JSON list of
times, since only the recent ones matter and they are read with the case.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cases",
        sa.Column("refused_proposals", JSONB, nullable=False, server_default="[]"),
        schema=schema_of(op),
    )


def downgrade() -> None:
    op.drop_column("cases", "refused_proposals", schema=schema_of(op))
