"""The collections side's view of a loan is derived, no longer written per check.

Every balance check wrote a `collections_views` row (the workflow's expectation, or the
amount confirmed) beside its `balance_answers` row: two rows for one fact. An answer now
carries the figure the collections side holds once it has the answer
(`collections_currency`, `collections_outstanding`), a check waiting for the ledger's API
carries its expectation in `pending_checks.payload` already, and only a reconciliation
pass's correction is written as a figure of its own, in `collections_corrections` (the old
table renamed: its rows, written before this migration, keep their figures and times).
`collections_views` becomes a view: per loan, the newest of the three (a correction first,
then an answer, then a waiting check, at the same time).

Nothing is backfilled: each old answer's figure was written to the old table in its own
transaction, so the carried-over row is never older than the loan's old answers.
Downgrade writes the view's rows back into the table.

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


def _view_sql(schema: str) -> str:
    s = f'"{schema}"'
    # rank breaks ties of one instant: a correction restates the ledger after the answer
    # (a nothing_owed answer and its correction share the answer's row), an answer
    # settles its own waiting check.
    return f"""
        CREATE VIEW {s}.collections_views AS
        SELECT DISTINCT ON (loan_id) loan_id, currency, outstanding, source, updated_at
        FROM (
            SELECT loan_id, currency, outstanding, source, updated_at, 0 AS rank
            FROM {s}.collections_corrections
            UNION ALL
            SELECT loan_id, collections_currency, collections_outstanding,
                   CASE WHEN answer_type = 'confirmed' THEN 'confirmation'
                        WHEN payload->>'reason' = 'nothing_owed' THEN 'correction'
                        ELSE 'check' END,
                   answered_at, 1
            FROM {s}.balance_answers
            WHERE collections_outstanding IS NOT NULL
            UNION ALL
            SELECT loan_id, payload->>'currency',
                   CAST(payload->>'expected_outstanding' AS numeric(20, 6)), 'check',
                   queued_at, 2
            FROM {s}.pending_checks
        ) AS figures
        ORDER BY loan_id, updated_at DESC, rank
    """


def upgrade() -> None:
    schema = schema_of(op)
    money = sa.Numeric(20, 6)
    op.rename_table("collections_views", "collections_corrections", schema=schema)
    # Nullable, no default: adding them rewrites nothing.
    op.add_column("balance_answers", sa.Column("collections_currency", sa.Text), schema=schema)
    op.add_column("balance_answers", sa.Column("collections_outstanding", money), schema=schema)
    # The view's newest answer of a loan (reconciliation reads it per open case).
    op.create_index(
        "ix_balance_answers_loan_id_answered_at",
        "balance_answers",
        ["loan_id", "answered_at"],
        schema=schema,
    )
    op.execute(_view_sql(schema))


def downgrade() -> None:
    schema = schema_of(op)
    s = f'"{schema}"'
    op.execute(f"""
        INSERT INTO {s}.collections_corrections
            (loan_id, currency, outstanding, source, updated_at)
        SELECT loan_id, currency, outstanding, source, updated_at FROM {s}.collections_views
        ON CONFLICT (loan_id) DO UPDATE SET currency = EXCLUDED.currency,
            outstanding = EXCLUDED.outstanding, source = EXCLUDED.source,
            updated_at = EXCLUDED.updated_at
    """)
    op.execute(f"DROP VIEW {s}.collections_views")
    op.drop_index("ix_balance_answers_loan_id_answered_at", "balance_answers", schema=schema)
    op.drop_column("balance_answers", "collections_outstanding", schema=schema)
    op.drop_column("balance_answers", "collections_currency", schema=schema)
    op.rename_table("collections_corrections", "collections_views", schema=schema)
