"""Contact intents take their status changes in place, with two indexes fewer.

An intent is written when it is planned, again when its balance is confirmed (commanded)
and again when the notifier reports the outcome: every delinquent loan's contact, every
day. Two of the table's four indexes were read by no query: ``(loan_id, status)`` (the
batch load reads a case's intents by ``case_id``) and ``check_id`` (a confirmation's intent
is found among its case's, already loaded). Each still took an entry per insert and, since
``status`` was indexed, one per update in all four. Without them, and with room left on
each page, a status change can be a HOT update (no index touched). Measured on a scratch
table of 60,000 intents in 500-row statements (three runs each): insert 17–21 → 11–15 us
of PostgreSQL per row, status update 28–35 → 19–24.

The fill factor applies to pages written from now on; ``VACUUM FULL
workflow.contact_intents`` in a maintenance window repacks existing ones.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from alembic import op

from collections_kit.migration_ops import schema_of

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FILL_FACTOR = 80  # as the cases table (0004): room on each page for new row versions


def upgrade() -> None:
    schema = schema_of(op)
    op.drop_index("ix_contact_intents_loan_status", table_name="contact_intents", schema=schema)
    op.drop_index("ix_contact_intents_check_id", table_name="contact_intents", schema=schema)
    op.execute(f'ALTER TABLE "{schema}".contact_intents SET (fillfactor = {FILL_FACTOR})')


def downgrade() -> None:
    schema = schema_of(op)
    op.execute(f'ALTER TABLE "{schema}".contact_intents RESET (fillfactor)')
    op.create_index("ix_contact_intents_check_id", "contact_intents", ["check_id"],
                    schema=schema)
    op.create_index("ix_contact_intents_loan_status", "contact_intents",
                    ["loan_id", "status"], schema=schema)
