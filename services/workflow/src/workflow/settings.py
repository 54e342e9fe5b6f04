from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class WorkflowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WORKFLOW_", extra="ignore", frozen=True)

    service_name: str = "workflow"
    db_schema: str = "workflow"
    http_port: int = 8001
    # Nothing here waits on a person's money at the millisecond: under a trickle, let the
    # broker gather up to 25 ms of records per fetch (fewer, fuller transactions; about a
    # fifth less CPU across the services at 160 loans/s, which the notifier's repayments
    # then have).
    fetch_min_bytes: int = 64 * 1024
    fetch_max_wait_ms: int = 25
    # Escalation policies (TOML), one per product; none: the built-in default policy.
    policy_files: tuple[Path, ...] = ()
