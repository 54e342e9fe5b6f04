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
    func,
    text,
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
    Column("stage_epoch", Integer, nullable=False, server_default="0"),
    Column("stage_entered_at", DateTime(timezone=True)),
    Column("outstanding_at_stage_entry", Numeric(20, 6)),
    Column("hold", JSONB),
    Column("arrangement", JSONB),
    Column("last_arrangement", JSONB),
    Column("unanswered_contacts", Integer, nullable=False, server_default="0"),
    Column("milestones", JSONB, nullable=False, server_default="[]"),
    Column("next_action_at", DateTime(timezone=True)),
    Column("money_applied_at", DateTime(timezone=True)),
    Column("refused_proposals", JSONB, nullable=False, server_default="[]"),
    Column("variant", Text, nullable=False, server_default=""),
    # Early warning: the risk signal a pre-delinquency case rests on (migration 0016).
    Column("pre_delinquency", JSONB),
    Index("ix_cases_stage_status", "status", "stage"),
    Index("ix_cases_next_action_at", "next_action_at"),
    # No index on days_past_due: it changes daily for every case, and an index on it
    # would make each of those updates touch every index (migration 0004).
    postgresql_with={"fillfactor": 80},
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
    Column("check_id", Text, nullable=False, server_default=""),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # The batch load reads a case's intents by case_id. No index on status (or on the
    # other columns the answer to a balance check writes): those updates stay in place
    # (migration 0005).
    Index("ix_contact_intents_case", "case_id"),
    postgresql_with={"fillfactor": 80},
)

timers = Table(
    "timers",
    metadata,
    Column("timer_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("fired_at", DateTime(timezone=True)),
    # fired | superseded: a superseded timer was made stale by a later transition.
    Column("outcome", Text),
    Index("ix_timers_due_unfired", "due_at", postgresql_where=text("fired_at IS NULL")),
    Index("ix_timers_case", "case_id"),
)

# The journal: every input a case's decisions were made from, with the timeline entries the
# decision wrote (migration 0021: in the input's row, not a row each; ``timeline`` below
# reads them back). Ids come from ``timeline_slots``, shared with ``timeline_rows``.
case_inputs = Table(
    "case_inputs",
    metadata,
    Column("id", BigInteger, server_default=text("nextval('timeline_slots')"), primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("cause_id", Text, nullable=False),
    Column("input_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    # Who made the decision (the timeline's ``actor``), and its entries: JSON objects with
    # the timeline's other columns (kind, cause, stage_before... detail).
    Column("actor", Text),
    Column("entries", JSONB, nullable=False, server_default="[]"),
    Index("ix_case_inputs_case", "case_id", "id"),
)

# The newest repayment or reversal of a loan that had no case when it was consumed.
money_seen = Table(
    "money_seen",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("repayment_id", Text, nullable=False),
    Column("amount", Numeric(20, 6), nullable=False),
    Column("outstanding_after", Numeric(20, 6), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Index("ix_money_seen_seen_at", "seen_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("status", Integer),
    Column("body", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Forgotten past WORKFLOW_IDEMPOTENCY_KEY_RETENTION_HOURS, oldest first (migration 0022).
    Index("ix_idempotency_keys_created_at", "created_at"),
)

# Timeline entries that no journalled input wrote (the work queues' task entries), and
# every entry written before migration 0021. Insert here; read through ``timeline``.
timeline_rows = Table(
    "timeline_rows",
    metadata,
    Column(
        "id",
        BigInteger,
        server_default=text("nextval('timeline_slots') * 1024"),
        primary_key=True,
    ),
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
    # A lease runs out once (migration 0011): one expiry entry per lease id.
    Index(
        "ux_timeline_lease_expired",
        text("(detail->>'lease_id')"),
        unique=True,
        postgresql_where=text("kind = 'task_lease_expired'"),
    ),
)

# A case's timeline, in the order written: a VIEW (migration 0021) over ``timeline_rows``
# and the entries in the journal's rows, the id of an entry in an input's row being
# ``input id * 1024 + its position`` (1, 2...), and a row's ``slot * 1024``: one sequence
# gives both, so ids rise in the order entries were written, old and new alike. Read only.
timeline = Table(
    "timeline",
    metadata,
    Column("id", BigInteger, primary_key=True),
    # The columns of its rows, which the view reads the inputs' entries into.
    *(Column(c.name, c.type, nullable=c.nullable) for c in timeline_rows.c if c.name != "id"),
)

# Work for people (migration 0009): at most one leased task per borrower, one live task of
# each kind per case; the database enforces both (partial unique indexes).
tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("borrower_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("collector", Text),
    Column("lease_id", Text),
    Column("leased_at", DateTime(timezone=True)),
    Column("lease_until", DateTime(timezone=True)),
    Column("renewals", Integer, nullable=False, server_default="0"),
    Column("ended_at", DateTime(timezone=True)),
    Column("outcome", Text),
    Column("detail", JSONB, nullable=False, server_default="{}"),
    Index(
        "ix_tasks_queue_open",
        "queue",
        "priority",
        "created_at",
        postgresql_where=text("status = 'open'"),
    ),
    Index("ix_tasks_case", "case_id"),
    Index("ix_tasks_lease_until", "lease_until", postgresql_where=text("status = 'leased'")),
    Index(
        "ux_tasks_leased_borrower",
        "borrower_id",
        unique=True,
        postgresql_where=text("status = 'leased'"),
    ),
    Index(
        "ux_tasks_live_case_kind",
        "case_id",
        "kind",
        unique=True,
        postgresql_where=text("status IN ('open', 'leased')"),
    ),
)

# Agency placements (migration 0010): at most one running per loan.
placements = Table(
    "placements",
    metadata,
    Column("placement_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("agency", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("tier_index", Integer, nullable=False),
    Column("commission_rate", Numeric(9, 6), nullable=False),
    Column("currency", Text, nullable=False),
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("amount_placed", Numeric(20, 6), nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("collected", Numeric(20, 6), nullable=False),
    Column("commission", Numeric(20, 6), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("end_reason", Text),
    # In the order written (migration 0014): a loan's newest placement is its highest.
    Column("seq", BigInteger, Identity(), nullable=False),
    Index(
        "ux_placements_running_loan",
        "loan_id",
        unique=True,
        postgresql_where=text("ended_at IS NULL"),
    ),
    Index("ix_placements_loan", "loan_id", "placed_at"),
    Index(
        "ix_placements_agency_running",
        "agency",
        "loan_id",
        postgresql_where=text("ended_at IS NULL"),
    ),
    # The per-agency report, ended placements included (migration 0012).
    Index("ix_placements_agency", "agency", "currency"),
)

placement_commissions = Table(
    "placement_commissions",
    metadata,
    Column("placement_id", Text, primary_key=True),
    Column("repayment_id", Text, primary_key=True),
    Column("agency", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount", Numeric(20, 6), nullable=False),
    Column("commission", Numeric(20, 6), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_placement_commissions_agency", "agency", "currency"),
)
