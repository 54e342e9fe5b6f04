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

# The measures (docs/measures.md), per variant, over the trailing window that ends at each
# refresh: set from the case timelines by app/kpis.py, never counted up in memory, so a
# restart or a second replica shows the same figures. NaN when nothing was there to measure.
KPI_LABELS = ["variant"]
KPI_RATIOS = {
    name: Gauge(f"collections_kpi_{name}", help_, KPI_LABELS)
    for name, help_ in (
        ("roll_rate", "Share of cases in a stage that rolled to a later stage"),
        ("cure_rate", "Share of the cases opened in the window closed repaid or settled"),
        ("promise_kept_rate", "Share of the promises (instalments) judged that were kept"),
        ("right_party_contact_rate", "Share of calls that reached the borrower themself"),
        ("contacts_per_cure", "Contact attempts on the window's new cases per cure"),
        ("days_to_cure", "Mean days from opening to cure"),
        ("liquidation_rate", "Share of the amount placed with agencies collected"),
    )
}
KPI_NUMERATOR = Gauge(
    "collections_kpi_numerator", "A measure's numerator", [*KPI_LABELS, "measure"]
)
KPI_DENOMINATOR = Gauge(
    "collections_kpi_denominator", "A measure's denominator", [*KPI_LABELS, "measure"]
)
KPI_CASES = Gauge(
    "collections_kpi_cases", "Cases not closed at some moment of the window", KPI_LABELS
)
KPI_STAGE_ROLL_RATE = Gauge(
    "collections_kpi_stage_roll_rate",
    "Share of the cases in the stage that rolled to a later stage",
    [*KPI_LABELS, "stage"],
)
KPI_STAGE_FUNNEL = Gauge(
    "collections_kpi_stage_funnel",
    "Cases that entered the stage in the window",
    [*KPI_LABELS, "stage"],
)
KPI_SUPPRESSED = Gauge(
    "collections_kpi_suppressed_contacts",
    "Contacts withheld in the window, by reason code",
    [*KPI_LABELS, "reason"],
)
KPI_WINDOW = Gauge("collections_kpi_window_seconds", "The length of the window the KPIs cover")
KPI_REFRESHED = Gauge(
    "collections_kpi_refreshed_timestamp_seconds", "When the KPI gauges were last set (Unix time)"
)
