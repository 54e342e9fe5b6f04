"""Ledger-sync's tables (SQLAlchemy Core). The schema itself is in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    column,
    table,
)
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.db import plumbing_tables

metadata = MetaData()
inbox, outbox = plumbing_tables(metadata)

loan_balances = Table(
    "loan_balances",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("currency", Text, nullable=False),
    Column("balance", Numeric(20, 6), nullable=False),
    Column("watermark", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The ledger's API last agreed there was nothing beyond the watermark (0002).
    Column("verified_at", DateTime(timezone=True)),
)

buffered_postings = Table(
    "buffered_postings",
    metadata,
    Column("loan_id", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("posting_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount", Numeric(20, 6), nullable=False),
    Column("booked_at", DateTime(timezone=True), nullable=False),
    Column("repayment_id", Text),
    PrimaryKeyConstraint("loan_id", "sequence"),
)

repayments = Table(
    "repayments",
    metadata,
    Column("repayment_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False, index=True),
    Column("amount", Numeric(20, 6)),
    Column("received_at", DateTime(timezone=True)),
    # Booked by the ledger: from then on the projection's balance includes it.
    Column("booked", Boolean, nullable=False),
    Column("reversed", Boolean, nullable=False),
)

balance_answers = Table(
    "balance_answers",
    metadata,
    Column("check_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("answer_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("answered_at", DateTime(timezone=True), nullable=False),
    # What the collections side holds for the loan once it has this answer (0008): the
    # ledger's amount confirmed or corrected (nothing_owed), else the check's expectation.
    # Null on answers from before 0008 (their figure is in collections_corrections).
    Column("collections_currency", Text),
    Column("collections_outstanding", Numeric(20, 6)),
    Index("ix_balance_answers_loan_id_answered_at", "loan_id", "answered_at"),
)

# Balance checks waiting for the ledger's API (0002): the projection was stale, or an earlier
# check for the same loan is still waiting (answers for one loan keep their order).
pending_checks = Table(
    "pending_checks",
    metadata,
    Column("check_id", Text, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Column("loan_id", Text, nullable=False, index=True),
    # The BalanceCheckRequested as received, and the id of the event that carried it.
    Column("payload", JSONB, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    # A replica working on it holds a lease; one that dies lets the lease run out.
    Column("claimed_until", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
)

# The workflow's open cases, from collections.case-events.v1 (0002).
open_cases = Table(
    "open_cases",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    # The last correction published for the case, so a pass does not repeat itself.
    Column("last_correction_kind", Text),
    Column("last_correction_outstanding", Numeric(20, 6)),
    Column("last_correction_watermark", Integer),
)

# The figures a reconciliation pass's corrections set (0008; before it, every figure of
# collections_views was written here, and those rows stay).
collections_corrections = Table(
    "collections_corrections",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("currency", Text, nullable=False),
    Column("outstanding", Numeric(20, 6), nullable=False),
    # correction; rows from before 0008 also check or confirmation.
    Column("source", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# What the collections side last held as a loan's outstanding, as seen from here: a view
# (0008), per loan the newest of the answers' figures, the waiting checks' expectations and
# the corrections. Not a table of the metadata: nothing writes it.
collections_views = table(
    "collections_views",
    column("loan_id", Text),
    column("currency", Text),
    column("outstanding", Numeric(20, 6)),
    # check (the workflow's expectation), confirmation or correction (ledger-sync's figure).
    column("source", Text),
    column("updated_at", DateTime(timezone=True)),
)

reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False, index=True),
    Column("finished_at", DateTime(timezone=True)),
    # running | completed | abandoned (the replica died mid-pass)
    Column("status", Text, nullable=False),
    Column("examined", Integer, nullable=False, server_default="0"),
    # Findings by kind: in_sync, nothing_owed, drift, skipped; and corrections published.
    Column("counts", JSONB, nullable=False),
)

# One row per case a pass corrected or could not check; cases in sync are only counted.
reconciliation_findings = Table(
    "reconciliation_findings",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("published", Boolean, nullable=False),
    Column("event_id", Text),
    Column("currency", Text),
    Column("collections_outstanding", Numeric(20, 6)),
    Column("ledger_outstanding", Numeric(20, 6)),
    Column("ledger_watermark", Integer, nullable=False),
    Column("detail", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "loan_id"),
)
