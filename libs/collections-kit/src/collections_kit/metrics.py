"""Prometheus metrics shared by every service (labelled by service where it matters)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "collections_messages_consumed_total",
    "Records handled by a consumer",
    ["consumer", "topic", "result"],
)
BATCH_SECONDS = Histogram(
    "collections_consumer_batch_seconds",
    "Time to handle and commit one polled batch",
    ["consumer"],
)
CONSUMER_LAG = Gauge(
    "collections_consumer_lag",
    "Records behind the partition's end offset",
    ["consumer", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "collections_dead_letters_total",
    "Records sent to the dead-letter topic",
    ["consumer", "kind"],
)
DEAD_LETTER_FAILURES = Counter(
    "collections_dead_letter_failures_total",
    "Records that not even a bare dead letter could hold: skipped, logged with their origin",
    ["consumer"],
)
OUTBOX_PUBLISHED = Counter(
    "collections_outbox_published_total",
    "Outbox rows published to Kafka",
    ["schema"],
)
INBOX_PRUNED = Counter(
    "collections_inbox_rows_pruned_total",
    "Inbox rows (a poll's claims each, or an older single claim) deleted past the retention",
    ["schema"],
)
OUTBOX_BACKLOG = Gauge(
    "collections_outbox_backlog",
    "Messages waiting in the outbox table (those of up to 100,000 transactions)",
    ["schema"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "collections_outbox_oldest_age_seconds",
    "Age of the oldest row waiting in the outbox table (0 when drained)",
    ["schema"],
)
