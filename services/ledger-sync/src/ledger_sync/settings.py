from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class LedgerSyncSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_SYNC_", extra="ignore", frozen=True)

    service_name: str = "ledger-sync"
    db_schema: str = "ledger_sync"
    http_port: int = 8002
    # How long a confirmation may be relied on before the notifier must refuse it.
    confirmation_validity_s: int = Field(default=1800, ge=1)
    tolerance: str = "1.00"
