"""The REST writes' idempotency keys are found by age, to be forgotten past a retention.

Every write through the REST API keeps its key and answer (``idempotency_keys``) so that a
retry replays the first answer; nothing deleted a key. The timer worker now prunes keys
older than ``WORKFLOW_IDEMPOTENCY_KEY_RETENTION_HOURS`` (30 days) a batch at a time, which
this index on ``created_at`` keeps a short read.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05
"""

from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_idempotency_keys_created_at",
        "idempotency_keys",
        ["created_at"],
        schema=schema_of(op),
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", "idempotency_keys", schema=schema_of(op))
