from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from collections_kit.pii import DEV_KID, KeyRing, dev_ring
from collections_kit.settings import ServiceSettings
from notifier.domain.policy import RECHECK_LOOKBACK


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore", frozen=True)

    service_name: str = "notifier"
    db_schema: str = "notifier"
    http_port: int = 8003
    # A repayment must stop contact without waiting: the repayment loop's fetches answer as
    # soon as a record is there. The other loops (commands and case events, checks and
    # confirmations) let the broker gather records for up to 100 ms like the other
    # services (``fetch_min_bytes``, ``fetch_max_wait_ms``): answered at once, they cost a
    # transaction per record or two under a trickle, and the notifier half as much CPU
    # again at 220 background loans/s (bench/HISTORY.md, 2026-12-04: suppression).
    repayment_fetch_min_bytes: int = Field(default=1, ge=1)
    repayment_fetch_max_wait_ms: int = Field(default=500, ge=0)

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
    # Who the texts and letters say is writing (the validation notice must name it).
    collector_name: str = "The lender"
    letter_sender: str = "The lender, Collections department"
    # A TrueType font (.ttf/.ttc) to embed in Chinese letters; unset: Noto Sans SC from the
    # justmytype-intl-cjk wheel (see notifier.adapters.letters).
    letter_cjk_font: Path | None = None

    # The SMS and voice provider's HTTP API. Unset: SMS and calls are only recorded.
    provider_base_url: str | None = None
    provider_api_key: SecretStr | None = None
    provider_timeout_s: float = Field(default=5.0, gt=0)
    provider_max_tries: int = Field(default=3, ge=1)
    provider_backoff_s: float = Field(default=0.5, ge=0)

    # The jurisdiction files, one per jurisdiction (collections_kit.jurisdictions; None:
    # those shipped with it), the same directory as the workflow's WORKFLOW_JURISDICTIONS_DIR.
    jurisdictions_dir: Path | None = None
    # Rules for attempts in doubt, and jurisdictions replaced for this service only: a TOML
    # file (see services/notifier/policy.example.toml). A jurisdiction only named here has
    # no file, so the workflow opens no case for it: add one with a file.
    policy_file: Path | None = None

    # Contact permits (notifier.app.permits): how long a granted permit lets its holder
    # start the contact, and how long after that its result may still be reported.
    permit_ttl_s: float = Field(default=300.0, gt=0)
    permit_result_window_s: float = Field(default=3600.0, gt=0)
    # How long before the ledger confirmation a repayment still voids it (see decide.py).
    recheck_lookback_s: float = Field(default=RECHECK_LOOKBACK.total_seconds(), ge=0)
    # How long a row may stay "sending" before another dispatcher takes it over.
    sending_lease_s: float = Field(default=120.0, gt=0)
    send_max_attempts: int = Field(default=5, ge=1)
    send_retry_backoff_s: float = Field(default=30.0, ge=0)
    dispatch_batch: int = Field(default=100, ge=1)
    dispatch_concurrency: int = Field(default=10, ge=1)
    dispatch_safety_poll_s: float = Field(default=1.0, gt=0)
    # Dispatch is held unless every repayment published up to this long ago is applied
    # (notifier.app.repayment_gate); the gate looks at the topic's offsets this often.
    repayment_gate_max_lag_ms: int = Field(default=1000, gt=0)
    repayment_gate_look_ms: int = Field(default=200, gt=0)

    # Personal data at rest (contact details, recorded sends, letters): AES-256-GCM keys,
    # "kid1:<base64 32 bytes>,kid2:...", and the id of the one new values are sealed with
    # (default: the last). Older keys stay listed until every value is re-sealed. Unset in
    # dev and test: the built-in development key; prod refuses to start without keys.
    pii_keys: SecretStr | None = None
    pii_active_kid: str | None = None

    # Delivery receipts (POST /v1/delivery-receipts/{provider}) are signed by each provider
    # with a secret of its own: "provider1:secret1,provider2:secret2". A provider without a
    # secret here cannot post receipts at all.
    delivery_receipt_secrets: SecretStr | None = None

    def receipt_secrets(self) -> dict[str, bytes]:
        if self.delivery_receipt_secrets is None:
            return {}
        secrets: dict[str, bytes] = {}
        for item in self.delivery_receipt_secrets.get_secret_value().split(","):
            provider, sep, secret = item.strip().partition(":")
            if not sep or not provider or not secret:
                raise ValueError("delivery_receipt_secrets: expected provider:secret, ...")
            secrets[provider] = secret.encode()
        return secrets

    @model_validator(mode="after")
    def _receipt_secrets(self) -> NotifierSettings:
        self.receipt_secrets()  # a malformed list stops the start here
        return self

    def key_ring(self) -> KeyRing:
        if self.pii_keys is None:
            return dev_ring()
        return KeyRing.parse(self.pii_keys.get_secret_value(), self.pii_active_kid)

    @model_validator(mode="after")
    def _pii_keys(self) -> NotifierSettings:
        ring = self.key_ring()  # a malformed ring stops the start here
        if self.environment == "prod" and (self.pii_keys is None or DEV_KID in ring.kids):
            raise ValueError(
                "environment=prod needs NOTIFIER_PII_KEYS (the development key is not allowed)"
            )
        return self

    @model_validator(mode="after")
    def _gate_can_open(self) -> NotifierSettings:
        # A quiet topic is confirmed current at each look; looks further apart than the
        # allowed lag would close the gate between them.
        if 2 * self.repayment_gate_look_ms > self.repayment_gate_max_lag_ms:
            raise ValueError(
                "repayment_gate_look_ms must be at most half of repayment_gate_max_lag_ms"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> NotifierSettings:
        # The call is cut at half the lease; an SMTP timeout beyond that would never fire.
        if self.smtp_timeout_s >= self.sending_lease_s / 2:
            raise ValueError("smtp_timeout_s must be shorter than half of sending_lease_s")
        # Every try may time out and each wait is at most 5 s: all of it within the cut.
        worst = (
            self.provider_max_tries * self.provider_timeout_s + (self.provider_max_tries - 1) * 5.0
        )
        if worst >= self.sending_lease_s / 2:
            raise ValueError(
                "provider_max_tries x provider_timeout_s (plus backoff) must be "
                "shorter than half of sending_lease_s"
            )
        return self
