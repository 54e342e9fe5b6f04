"""Early warning: the risk signal a pre-delinquency case rests on, on the case row.

A case opened by a risk signal on a current loan (domain/decide.py) carries that signal
(kind, score, observed at, valid until, the signal that opened it) until the loan falls
overdue, when it becomes an ordinary case and the column is cleared. One JSON object, read
with the case, since it is only ever read and written whole. Existing cases have none.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.migration_ops import schema_of

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("pre_delinquency", JSONB), schema=schema_of(op))


def downgrade() -> None:
    op.drop_column("cases", "pre_delinquency", schema=schema_of(op))
