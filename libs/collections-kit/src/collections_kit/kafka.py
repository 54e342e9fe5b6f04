"""How every Kafka client of a service connects: one place maps the security settings
(TLS, SASL/SCRAM) onto aiokafka's keyword arguments, for the consumer, the producer and
the admin client alike."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from collections_kit.settings import ServiceSettings


def ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        password=(
            settings.kafka_ssl_key_password.get_secret_value()
            if settings.kafka_ssl_key_password
            else None
        ),
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_kwargs(settings: ServiceSettings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security arguments for any aiokafka client."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # settings validation ensures it
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    return kwargs
