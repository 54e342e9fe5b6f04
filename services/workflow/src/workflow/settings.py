from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class WorkflowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WORKFLOW_", extra="ignore", frozen=True)

    service_name: str = "workflow"
    db_schema: str = "workflow"
    http_port: int = 8001
    # Escalation policies (TOML), one per product; none: the built-in default policy.
    policy_files: tuple[Path, ...] = ()
    # The jurisdiction files (collections_kit.jurisdictions; None: those shipped with it),
    # the same directory as the notifier's NOTIFIER_JURISDICTIONS_DIR. An overdue report for
    # a jurisdiction without a file is dead-lettered as invalid ("jurisdiction XX has no
    # policy") rather than opening a case nobody may contact.
    jurisdictions_dir: Path | None = None
    # How long a repayment of a loan without a case is remembered for the overdue report
    # that may open its case late (topics are consumed independently). It covers a consumer
    # lagging behind by that much; beyond it the periodic balance re-check still closes.
    money_seen_retention_hours: float = Field(default=72.0, gt=0)
    # How long a REST write's Idempotency-Key and answer are kept for its retries (a client
    # retrying a month later is not retrying: it is a new request under an old key).
    idempotency_key_retention_hours: float = Field(default=720.0, gt=0)
    # The agency placement policy (TOML, e.g. policies/placements.toml); None: no agencies,
    # nothing is placed.
    placement_policy_file: Path | None = None
    # The work queues' policy (routes, balance bands, lease length); None: the shipped
    # policies/queues.toml.
    queue_policy_file: Path | None = None
    # The collections_kpi_* gauges (docs/measures.md): recomputed from the case timelines
    # this often, over the trailing window of this many hours; 0 seconds: never (no gauges).
    # Each refresh reads every case touched in the window (a page at a time).
    kpi_refresh_s: float = Field(default=300.0, ge=0)
    kpi_window_hours: float = Field(default=720.0, gt=0, le=366 * 24)
