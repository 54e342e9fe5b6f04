"""Ledger-sync's tables (SQLAlchemy Core). The schema itself is in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
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
)
