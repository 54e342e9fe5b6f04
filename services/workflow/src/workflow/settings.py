from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class WorkflowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WORKFLOW_", extra="ignore", frozen=True)

    service_name: str = "workflow"
    db_schema: str = "workflow"
    http_port: int = 8001
