from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class WorkflowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WORKFLOW_", extra="ignore", frozen=True)

    service_name: str = "workflow"
    db_schema: str = "workflow"
    http_port: int = 8001
    # Escalation policies (TOML), one per product; none: the built-in default policy.
    policy_files: tuple[Path, ...] = ()
