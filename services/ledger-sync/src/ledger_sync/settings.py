from __future__ import annotations

from decimal import Decimal, InvalidOperation

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings
from collections_kit.vocabulary import BALANCE_TOLERANCE
from ledger_sync.domain.ledger import CONFIRMATION_VALIDITY


class LedgerSyncSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_SYNC_", extra="ignore", frozen=True)

    service_name: str = "ledger-sync"
    db_schema: str = "ledger_sync"
    http_port: int = 8002
    # How long a confirmation may be relied on before the notifier must refuse it.
    confirmation_validity_s: int = Field(default=int(CONFIRMATION_VALIDITY.total_seconds()), ge=1)
    # A decimal string, like every amount: differences up to this are rounding, not debt.
    tolerance: str = str(BALANCE_TOLERANCE)

    # --- the ledger's HTTP API, asked when the projection is stale --------------------------
    # None: no fallback; a stale projection is refused as unknown_loan / sequence_gap.
    ledger_api_url: str | None = None
    # Short on purpose: a balance check waits for these, and a slow ledger is a down ledger.
    ledger_api_connect_timeout_s: float = Field(default=0.5, gt=0, le=10)
    ledger_api_read_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # Attempts per call (1 = no retry); retries back off with full jitter from this base.
    ledger_api_attempts: int = Field(default=3, ge=1, le=5)
    ledger_api_backoff_s: float = Field(default=0.1, ge=0, le=5)
    # Consecutive failed attempts that open the breaker, and how long it then fails fast.
    ledger_api_breaker_failures: int = Field(default=5, ge=1)
    ledger_api_breaker_reset_s: float = Field(default=10.0, gt=0)
    # Loans asked about at once by one replica.
    ledger_api_concurrency: int = Field(default=4, ge=1, le=64)
    # A projection that has not matched the ledger for longer than this is stale (the ledger
    # may have booked more); None: the feed is trusted however long a loan stays quiet.
    # Needs ledger_api_url: without it a stale projection could never be refreshed.
    projection_max_age_s: float | None = Field(default=None, gt=0)
    # A replica working on a waiting check holds it this long before another may take over.
    pending_check_lease_s: float = Field(default=60.0, gt=0)
    # Safety net for waiting checks enqueued by another replica (this one's are immediate).
    pending_check_poll_s: float = Field(default=1.0, gt=0)

    # --- reconciliation ----------------------------------------------------------------------
    # Seconds between passes over the open cases; 0 turns reconciliation off.
    reconciliation_interval_s: float = Field(default=900.0, ge=0)
    # Open cases compared (and corrected) per database transaction.
    reconciliation_batch: int = Field(default=200, ge=1, le=5000)

    @field_validator("tolerance")
    @classmethod
    def _decimal_tolerance(cls, value: str) -> str:
        try:
            parsed = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError("tolerance must be a decimal string such as '1.00'") from exc
        if not parsed.is_finite() or parsed < 0:
            raise ValueError("tolerance must be a non-negative decimal")
        return value

    @field_validator("ledger_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("http://", "https://")):
            raise ValueError("ledger_api_url must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _max_age_needs_api(self) -> LedgerSyncSettings:
        if self.projection_max_age_s is not None and self.ledger_api_url is None:
            raise ValueError(
                "projection_max_age_s needs ledger_api_url: an aged projection "
                "could never be refreshed, so nothing would be confirmed"
            )
        return self
