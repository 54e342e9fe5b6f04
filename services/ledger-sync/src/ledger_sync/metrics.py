"""Ledger-sync's own Prometheus metrics (the kit's cover consumers, outbox and relay)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEDGER_API_CALLS = Counter(
    "ledger_sync_ledger_api_calls_total",
    "Attempts at the ledger's HTTP API, by endpoint and result",
    ["endpoint", "result"],
)
LEDGER_API_BREAKER_OPEN = Gauge(
    "ledger_sync_ledger_api_breaker_open",
    "1 while the circuit breaker in front of the ledger's API is open",
)
CHECKS_ANSWERED = Counter(
    "ledger_sync_balance_checks_answered_total",
    "Balance checks answered, by path (projection, after_ledger_api) and answer "
    "(confirmed or the refusal's reason)",
    ["path", "answer"],
)
RECONCILIATION_FINDINGS = Counter(
    "ledger_sync_reconciliation_findings_total",
    "Open cases compared by reconciliation, by finding and whether a correction went out",
    ["kind", "published"],
)
RECONCILIATION_LAST_COMPLETED = Gauge(
    "ledger_sync_reconciliation_last_completed_timestamp_seconds",
    "When the last reconciliation pass (on this replica) completed, as a Unix time",
)
BALANCE_CHECK_SECONDS = Histogram(
    "ledger_sync_balance_check_seconds",
    "From the workflow's request (requested_at) to the staged answer, by path",
    ["path"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BALANCE_CHECK_FAILURES = Counter(
    "ledger_sync_balance_check_failures_total",
    "Balance checks that could not be confirmed for a technical reason: the ledger API "
    "unavailable, or a stale projection or sequence gap refused",
    ["reason"],
)
LEDGER_API_SECONDS = Histogram(
    "ledger_sync_ledger_api_seconds",
    "Latency of one HTTP request to the ledger's API, by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
