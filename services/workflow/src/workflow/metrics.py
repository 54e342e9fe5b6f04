"""The workflow's own Prometheus metrics (the kit's cover consumers, outbox and relay)."""

from __future__ import annotations

from prometheus_client import Gauge

TIMERS_OVERDUE = Gauge(
    "workflow_timers_overdue",
    "Unfired timers past their due time (counted up to 100,000), as the timer worker last saw",
)
TIMERS_OLDEST_OVERDUE = Gauge(
    "workflow_timers_oldest_overdue_seconds",
    "How long the most overdue unfired timer is past its due time (0 when none)",
)
