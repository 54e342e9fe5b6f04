"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Validated at start-up, never read at import time.

    Each service subclasses this with ``env_prefix`` set (``WORKFLOW_``, ``NOTIFIER_``,
    ``LEDGER_SYNC_``), so two services on one host never read each other's knobs.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = "service"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:15432/collections"
    # The service's own PostgreSQL schema; its tables and Alembic version table live there.
    db_schema: str = "public"
    db_pool_size: int = 10

    kafka_bootstrap: str = "127.0.0.1:19092"
    # Prepended to every topic name; lets tests run isolated on a shared broker.
    topic_prefix: str = ""
    consumer_group: str = ""
    # Upper bound of records handled in one database transaction.
    max_batch: int = Field(default=500, ge=1)
    # Attempts for a message whose handler raises, before it is dead-lettered.
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=0.2, ge=0)

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"

    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}{self.service_name}"
