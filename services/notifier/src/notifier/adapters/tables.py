"""The notifier's tables (SQLAlchemy Core). The schema itself is in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from collections_kit.db import plumbing_tables

metadata = MetaData()
inbox, outbox = plumbing_tables(metadata)

ts = DateTime(timezone=True)

# One row per contact command: its content and where it is in its life.
dispatches = Table(
    "dispatches",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("intent_id", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("borrower_id", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount_due", Numeric(20, 6), nullable=False),
    Column("confirmation_id", Text, nullable=False),
    Column("ledger_watermark", BigInteger, nullable=False),
    Column("confirmed_at", ts, nullable=False),
    Column("confirmation_valid_until", ts, nullable=False),
    Column("borrower_time_zone", Text, nullable=False),
    Column("jurisdiction", Text, nullable=False),
    Column("issued_at", ts, nullable=False),
    Column("status", Text, nullable=False),
    # When the dispatcher should next look at the row: now for a new command, the window
    # start for a deferral, the lease expiry while sending, the backoff after a failure.
    Column("due_at", ts, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("decision_seq", Integer, nullable=False, server_default="0"),
    Column("reason", Text, nullable=False, server_default=""),
    Column("rule", Text, nullable=False, server_default=""),
    # A safe error code (never the provider's text, which may quote the address).
    Column("last_error", Text),
    Column("received_at", ts, nullable=False),
    Column("updated_at", ts, nullable=False),
    CheckConstraint(
        "status IN ('pending', 'deferred', 'sending', 'sent', 'failed', "
        "'blocked', 'cancelled', 'in_doubt')",
        name="ck_dispatches_status",
    ),
    Index(
        "ix_dispatches_due",
        "due_at",
        postgresql_where=text("status IN ('pending', 'deferred', 'sending')"),
    ),
    Index("ix_dispatches_loan_status", "loan_id", "status"),
)

# Every decision taken on a command, in order: the audit trail behind /v1/contacts.
contact_decisions = Table(
    "contact_decisions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("command_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("loan_id", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("decision", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("at", ts, nullable=False),
    Column("due_at", ts),
    UniqueConstraint("command_id", "seq", name="uq_contact_decisions_command_seq"),
    CheckConstraint(
        "decision IN ('sent', 'deferred', 'blocked', 'cancelled', 'failed', "
        "'in_doubt', 'resend_ordered')",
        name="ck_contact_decisions_decision",
    ),
    Index("ix_contact_decisions_loan", "loan_id", "id"),
    Index("ix_contact_decisions_decision_reason", "decision", "reason"),
)

# Per loan, the latest workflow cancellation: commands issued up to then are never sent,
# even if they arrive after it.
loan_cancellations = Table(
    "loan_cancellations",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("cancelled_at", ts, nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_at", ts, nullable=False),
)

# Cancellations that name one command, which may not have arrived yet.
command_cancellations = Table(
    "command_cancellations",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("cancelled_at", ts, nullable=False),
    Column("reason", Text, nullable=False),
)

repayments = Table(
    "repayments",
    metadata,
    Column("repayment_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount", Numeric(20, 6), nullable=False),
    Column("received_at", ts),
    Column("reversed_at", ts),
    Column("updated_at", ts, nullable=False),
    Index("ix_repayments_loan_received", "loan_id", "received_at"),
)

# Personal data: reaches us by REST only, never on Kafka, never in a log line.
contact_details = Table(
    "contact_details",
    metadata,
    Column("borrower_id", Text, primary_key=True),
    Column("language", Text, nullable=False),
    Column("email", Text),
    Column("phone", Text),
    Column("postal_address", Text),
    Column("guarantor_name", Text),
    Column("guarantor_email", Text),
    Column("guarantor_phone", Text),
    Column("guarantor_postal_address", Text),
    Column("updated_at", ts, nullable=False),
)

# What the stand-in for the SMS/voice/letter provider would have sent.
recorded_sends = Table(
    "recorded_sends",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("language", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("recorded_at", ts, nullable=False),
    Index("ix_recorded_sends_loan", "loan_id"),
)

# --- lawful dispatch (revision 0002) -----------------------------------------------------

# Every contact handed to a channel, with its result: what the frequency caps count. Kept
# in the database so the caps hold across restarts and across replicas.
contact_attempts = Table(
    "contact_attempts",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    # "<borrower_id>:<debtor|guarantor>": who was contacted.
    Column("person", Text, nullable=False),
    Column("channel", Text, nullable=False),
    # A pseudonym of the phone number (never the number), for per-number caps.
    Column("number_key", Text),
    Column("attempted_at", ts, nullable=False),
    Column("result", Text, nullable=False),
    Column("settles_by", ts),
    Column("provider_ref", Text),
    Column("updated_at", ts, nullable=False),
    # Who made the attempt: the notifier's channels ("system"), or a person under a
    # contact permit (its command_id is then the permit id). Revision 0007.
    Column("actor_kind", Text, nullable=False, server_default="system"),
    Column("actor_id", Text),
    CheckConstraint(
        "result IN ('pending', 'sent', 'delivered', 'answered', 'unanswered', 'failed', "
        "'unknown', 'connected')",
        name="ck_contact_attempts_result",
    ),
    CheckConstraint(
        "actor_kind IN ('system', 'collector', 'agency')", name="ck_contact_attempts_actor_kind"
    ),
    Index("ix_contact_attempts_person", "person", "attempted_at"),
    Index(
        "ix_contact_attempts_number",
        "number_key",
        "attempted_at",
        postgresql_where=text("number_key IS NOT NULL"),
    ),
)

# Per debt and person: the Reg F validation notice, in flight or sent.
validation_notices = Table(
    "validation_notices",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("person", Text, primary_key=True),
    Column("command_id", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("sent_at", ts),
    Column("dispute_by", ts),
    Column("updated_at", ts, nullable=False),
    CheckConstraint("status IN ('in_flight', 'sent')", name="ck_validation_notices_status"),
)

# Holds from the workflow (CaseHeld / CaseResumed).
case_holds = Table(
    "case_holds",
    metadata,
    Column("hold_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("held_at", ts, nullable=False),
    Column("until", ts),
    Column("resumed_at", ts),
    Column("updated_at", ts, nullable=False),
    Index("ix_case_holds_loan", "loan_id"),
)

# Cases the workflow closed (CaseClosed).
case_closures = Table(
    "case_closures",
    metadata,
    Column("case_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("closed_at", ts, nullable=False),
    Index("ix_case_closures_loan", "loan_id"),
)

# A person's wishes, managed over REST: a channel they opted out of...
channel_opt_outs = Table(
    "channel_opt_outs",
    metadata,
    Column("borrower_id", Text, primary_key=True),
    Column("party", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_at", ts, nullable=False),
)

# ...or no contact at all.
do_not_contact = Table(
    "do_not_contact",
    metadata,
    Column("borrower_id", Text, primary_key=True),
    Column("party", Text, primary_key=True),
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_at", ts, nullable=False),
)

# Letters rendered for print (personal data: the address is on them).
letters = Table(
    "letters",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("language", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("pdf", LargeBinary, nullable=False),
    Column("pdf_sha256", Text, nullable=False),
    Column("rendered_at", ts, nullable=False),
    Index("ix_letters_loan", "loan_id"),
)

# --- in doubt, delivery receipts (revision 0005) -------------------------------------------

# Every delivery receipt a provider posted, once per (provider, receipt id): a receipt
# posted again finds its row and changes nothing. ``effect`` says what it did: applied to
# its attempt, late (the attempt had settled already), or unmatched (no such attempt).
delivery_receipts = Table(
    "delivery_receipts",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("receipt_id", Text, primary_key=True),
    Column("command_id", Text),
    Column("provider_ref", Text),
    Column("status", Text, nullable=False),
    Column("effect", Text, nullable=False),
    Column("occurred_at", ts, nullable=False),
    Column("received_at", ts, nullable=False),
    CheckConstraint(
        "effect IN ('applied', 'late', 'unmatched')", name="ck_delivery_receipts_effect"
    ),
    Index("ix_delivery_receipts_command", "command_id"),
)

# --- contact permits (revision 0007) -------------------------------------------------------

# Every permit asked for, granted or refused, and the result its holder reported. A granted
# permit's attempt is in contact_attempts (command_id = permit_id), where the caps count it.
contact_permits = Table(
    "contact_permits",
    metadata,
    Column("permit_id", Text, primary_key=True),
    Column("loan_id", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("actor_kind", Text, nullable=False),
    Column("actor_id", Text, nullable=False),
    Column("actor_kind_from", Text, nullable=False),
    Column("decision", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("policy_version", Text, nullable=False),
    Column("anchor_command_id", Text),
    # The ledger confirmation it was decided on: the anchor's, or a fresher one (0009).
    Column("confirmation_id", Text),
    Column("asked_at", ts, nullable=False),
    Column("expires_at", ts),
    Column("result_by", ts),
    Column("retry_after", ts),
    Column("result", Text),
    Column("result_at", ts),
    CheckConstraint("decision IN ('granted', 'refused')", name="ck_contact_permits_decision"),
    CheckConstraint("actor_kind IN ('collector', 'agency')", name="ck_contact_permits_actor_kind"),
    CheckConstraint(
        "result IS NULL OR result IN ('connected', 'unanswered', 'conversation')",
        name="ck_contact_permits_result",
    ),
    Index("ix_contact_permits_loan", "loan_id", "asked_at"),
    Index("ix_contact_permits_decision_reason", "decision", "reason"),
)

# What the notifier has read of each loan's balance checks (migration 0009): the freshest
# ledger confirmation (a permit rests on it when it is fresher than the anchor command's),
# the newest check asked for and the newest answered, and when a permit refusal last asked
# the workflow for one. Never personal data: ids, amounts and times.
loan_confirmations = Table(
    "loan_confirmations",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("confirmation_id", Text),
    Column("ledger_watermark", BigInteger),
    Column("confirmed_outstanding", Numeric(20, 6)),
    Column("confirmed_at", ts),
    Column("valid_until", ts),
    Column("requested_check_id", Text),
    Column("requested_at", ts),
    Column("answered_check_id", Text),
    Column("asked_at", ts),
    Column("updated_at", ts, nullable=False),
)

# The cases placed with an agency now, as the workflow announced them on
# collections.placements.v1 (migration 0008): an agency reads the contact details of these
# borrowers only.
agency_placements = Table(
    "agency_placements",
    metadata,
    Column("loan_id", Text, primary_key=True),
    Column("borrower_id", Text, nullable=False),
    Column("agency", Text, nullable=False),
    Column("placement_id", Text, nullable=False),
    Column("running", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_agency_placements_borrower", "borrower_id", "agency"),
)
