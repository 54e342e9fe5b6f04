"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from collections_kit.topics import DLQ_RETENTION_DAYS

Environment = Literal["dev", "test", "prod"]


class ServiceSettings(BaseSettings):
    """Validated at start-up, never read at import time.

    Each service subclasses this with ``env_prefix`` set (``WORKFLOW_``, ``NOTIFIER_``,
    ``LEDGER_SYNC_``), so two services on one host never read each other's knobs.
    """

    # A settings error must not print the values it was given (passwords, keys).
    model_config = SettingsConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

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
    # How long the broker may hold a fetch to gather ``fetch_min_bytes``: under a trickle,
    # a poll of a few records costs a transaction, an offset commit and a relay round all
    # the same, so it waits up to 100 ms to take more per poll. At 160 background loans/s
    # the workflow and ledger-sync used 0.43 and 0.35 of a core with 25 ms, 0.20 and 0.18
    # with 100 ms (the broker and PostgreSQL less too); a loan's way to its first contact
    # takes a few hops of up to 0.1 s longer, which nobody waiting on a collections letter
    # notices. A service whose latency is critical answers at once instead (the notifier,
    # for repayments: one byte).
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    # Attempts for a message whose handler raises, before it is dead-lettered.
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=0.2, ge=0)

    # A record larger than this (key + value + headers) is dead-lettered unread.
    max_record_bytes: int = Field(default=256 * 1024, ge=1024)
    # How long the inbox remembers a consumed event id: longer than any copy of the event
    # can come back, the dead-letter topic's month included (collections_kit.inbox_retention).
    inbox_retention_days: int = Field(default=45, gt=DLQ_RETENTION_DAYS)

    # --- Kafka security (see README, "Security") ----------------------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # PEM bundle of the CAs that signed the brokers' certificates (None: the system's).
    kafka_ssl_cafile: Path | None = None
    # Client certificate and key, for brokers that authenticate clients by mTLS.
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    # Larger request bodies are refused with 413 before any route reads them.
    max_request_bytes: int = Field(default=64 * 1024, ge=1024)

    # --- tracing (collections_kit.tracing) ---------------------------------------------------
    # An OpenTelemetry collector's OTLP/HTTP base URL, e.g. http://otel-collector:4318;
    # unset: no spans are recorded, trace context is still passed on.
    otel_exporter_otlp_endpoint: str | None = None
    # Share of new traces recorded; a trace started upstream keeps its caller's decision.
    otel_sample_ratio: float = Field(default=1.0, ge=0, le=1)

    # dev and test trust the built-in development signing key (collections_kit.auth);
    # prod refuses to start without a real key source, issuer and (notifier) PII keys.
    environment: Environment = "dev"

    # --- authentication: OAuth2 client-credentials bearer JWTs ----------------------------
    # Where the authorisation server publishes its signing keys (fetched, cached).
    auth_jwks_url: str | None = None
    # Or static keys: a JWKS document inline, or in a file (key rotation: list both keys).
    auth_jwks_json: str | None = None
    auth_jwks_file: Path | None = None
    # The token's `aud` must name this; default: the service's name.
    auth_audience: str | None = None
    # The token's `iss` must equal this when set (required in prod).
    auth_issuer: str | None = None
    auth_algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    auth_jwks_cache_s: float = Field(default=300.0, gt=0)
    # Clock skew tolerated on exp / nbf / iat.
    auth_leeway_s: float = Field(default=30.0, ge=0, le=300)

    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}{self.service_name}"

    def audience(self) -> str:
        return self.auth_audience or self.service_name

    @model_validator(mode="after")
    def _secure_configuration(self) -> ServiceSettings:
        if self.kafka_security_protocol.startswith("SASL_"):
            if not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
            ):
                raise ValueError(
                    f"kafka_security_protocol {self.kafka_security_protocol} "
                    "needs kafka_sasl_mechanism, kafka_sasl_username and "
                    "kafka_sasl_password"
                )
        elif self.kafka_sasl_mechanism is not None:
            raise ValueError(
                "kafka_sasl_mechanism is set but kafka_security_protocol is not "
                "SASL_PLAINTEXT or SASL_SSL"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        for alg in self.auth_algorithms:
            if alg.upper() == "NONE" or alg.upper().startswith("HS"):
                # Symmetric or unsigned tokens would let anyone holding the JWKS mint tokens.
                raise ValueError(f"auth algorithm {alg} is not allowed")
        sources = [s for s in (self.auth_jwks_url, self.auth_jwks_json, self.auth_jwks_file) if s]
        if len(sources) > 1:
            raise ValueError("set only one of auth_jwks_url, auth_jwks_json, auth_jwks_file")
        if self.auth_jwks_url and not self.auth_jwks_url.startswith(("https://", "http://")):
            raise ValueError("auth_jwks_url must be an http(s) URL")
        if self.environment == "prod":
            if not sources:
                raise ValueError(
                    "environment=prod needs auth_jwks_url (or auth_jwks_json / "
                    "auth_jwks_file): the development signing key is not "
                    "trusted in production"
                )
            if self.auth_jwks_url and not self.auth_jwks_url.startswith("https://"):
                raise ValueError("environment=prod needs an https auth_jwks_url")
            if not self.auth_issuer:
                raise ValueError("environment=prod needs auth_issuer")
        return self
