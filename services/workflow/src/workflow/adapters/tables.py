"""The workflow's tables (SQLAlchemy Core). The schema itself is in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from collections_kit.db import plumbing_tables

metadata = MetaData()
inbox, outbox = plumbing_tables(metadata)

cases = Table(
    "cases",
    metadata,
    Column("case_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False, unique=True),
    Column("borrower_id", Text, nullable=False),
    Column("product", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("exit", Text),
    Column("outstanding", Numeric(20, 6), nullable=False),
    Column("amount_overdue", Numeric(20, 6), nullable=False),
    Column("days_past_due", Integer, nullable=False),
    Column("last_overdue_as_of", DateTime(timezone=True), nullable=False),
    Column("borrower_time_zone", Text, nullable=False),
    Column("jurisdiction", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_cases_stage_status", "status", "stage"),
)

contact_intents = Table(
    "contact_intents",
    metadata,
    Column("intent_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("command_id", Text),
    Column("confirmation_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_contact_intents_loan_status", "loan_id", "status"),
)

timeline = Table(
    "timeline",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("cause", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("stage_before", Text),
    Column("stage_after", Text),
    Column("status_before", Text),
    Column("status_after", Text),
    Column("policy_version", Text, nullable=False),
    Column("detail", JSONB, nullable=False),
    Index("ix_timeline_case", "case_id", "id"),
)
