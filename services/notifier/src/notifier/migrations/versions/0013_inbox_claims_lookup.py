"""The claim lookup always reads the inbox claims' GIN index: a function,
`inbox_claims_of`, whose query runs with `enable_seqscan = off`, and the index no longer
buffers entries in a pending list. The planner had chosen to scan every claim row, and
the claims of each poll grew with all claims ever made. See
collections_kit.migration_ops.add_inbox_claims_lookup_v1.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from alembic import op

from collections_kit.migration_ops import (
    add_inbox_claims_lookup_v1,
    drop_inbox_claims_lookup_v1,
    schema_of,
)

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_inbox_claims_lookup_v1(op, schema_of(op))


def downgrade() -> None:
    drop_inbox_claims_lookup_v1(op, schema_of(op))
