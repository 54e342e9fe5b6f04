"""The inbox keeps a fingerprint of each claimed payload and whether the claim was
dead-lettered: a redelivered event id with another payload is dead-lettered as a
conflicting duplicate instead of vanishing, and a replayed dead letter takes its claim
over in the consuming transaction (no manual inbox delete). See collections_kit.consumer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
from alembic import op

from collections_kit.migration_ops import (
    add_inbox_fingerprint_v1,
    drop_inbox_fingerprint_v1,
    schema_of,
)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_inbox_fingerprint_v1(op, schema_of(op))


def downgrade() -> None:
    drop_inbox_fingerprint_v1(op, schema_of(op))
