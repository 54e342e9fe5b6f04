from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from collections_kit.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore", frozen=True)

    service_name: str = "notifier"
    db_schema: str = "notifier"
    http_port: int = 8003

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_sender: str = "collections@lender.example"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_use_tls: bool = False
    # None: STARTTLS when the server offers it (the local test relay does not).
    smtp_start_tls: bool | None = None
    smtp_timeout_s: float = Field(default=15.0, gt=0)

    # Where a person stops messages on a channel; printed in every electronic message.
    opt_out_url: str = "https://lender.example/contact-preferences"

    # How long before the ledger confirmation a repayment still voids it (see decide.py).
    recheck_lookback_s: float = Field(default=600.0, ge=0)
    # How long a row may stay "sending" before another dispatcher takes it over.
    sending_lease_s: float = Field(default=120.0, gt=0)
    send_max_attempts: int = Field(default=5, ge=1)
    send_retry_backoff_s: float = Field(default=30.0, ge=0)
    dispatch_batch: int = Field(default=100, ge=1)
    dispatch_concurrency: int = Field(default=10, ge=1)
    dispatch_safety_poll_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> NotifierSettings:
        # The call is cut at half the lease; an SMTP timeout beyond that would never fire.
        if self.smtp_timeout_s >= self.sending_lease_s / 2:
            raise ValueError("smtp_timeout_s must be shorter than half of sending_lease_s")
        return self
