"""Kafka security settings, the PII key ring and the request size limit."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import OperationalError

from collections_kit import problems
from collections_kit.kafka import client_kwargs
from collections_kit.limits import BodySizeLimit
from collections_kit.pii import KeyRing, PiiError, dev_ring
from collections_kit.settings import ServiceSettings

# --- Kafka ---------------------------------------------------------------------------------


def test_plaintext_by_default() -> None:
    assert client_kwargs(ServiceSettings(kafka_bootstrap="k:9092")) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_scram_over_tls() -> None:
    settings = ServiceSettings(
        kafka_bootstrap="k1:9096,k2:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="workflow",
        kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_check_hostname=True,
    )
    kwargs = client_kwargs(settings)
    context = kwargs.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert kwargs == {
        "bootstrap_servers": "k1:9096,k2:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "workflow",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(settings)


def test_tls_only_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = _self_signed(tmp_path)
    kwargs = client_kwargs(
        ServiceSettings(
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=ca,
            kafka_ssl_certfile=cert,
            kafka_ssl_keyfile=key,
            kafka_ssl_check_hostname=False,
        )
    )
    assert kwargs["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in kwargs
    context = kwargs["ssl_context"]
    assert not context.check_hostname
    assert len(context.get_ca_certs()) == 1


def _self_signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ca.pem").write_bytes(pem)
    (tmp_path / "client.pem").write_bytes(pem)
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"


def test_sasl_without_credentials_or_with_plaintext_mismatch_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs kafka_sasl_mechanism"):
        ServiceSettings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="not SASL"):
        ServiceSettings(kafka_sasl_mechanism="SCRAM-SHA-256")
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=Path("/c.pem"))


def test_plain_sasl_without_tls() -> None:
    kwargs = client_kwargs(
        ServiceSettings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="u",
            kafka_sasl_password=SecretStr("p"),
        )
    )
    assert "ssl_context" not in kwargs
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"


# --- PII key ring --------------------------------------------------------------------------


def _key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def test_sealed_values_open_only_where_they_were_sealed() -> None:
    ring = dev_ring()
    sealed = ring.seal("+8613812341234", aad="contact_details.phone:B1")
    assert sealed is not None
    assert sealed.startswith("pii1:dev1:")
    assert "13812341234" not in sealed
    assert ring.open(sealed, aad="contact_details.phone:B1") == "+8613812341234"
    # A fresh nonce each time: equal phones do not look equal at rest.
    assert ring.seal("+8613812341234", aad="contact_details.phone:B1") != sealed
    with pytest.raises(PiiError, match="tampered or moved"):
        ring.open(sealed, aad="contact_details.phone:B2")  # moved to another borrower
    with pytest.raises(PiiError):
        ring.open(sealed[:-4] + "AAAA", aad="contact_details.phone:B1")
    with pytest.raises(PiiError, match="not a sealed value"):
        ring.open("+8613812341234", aad="contact_details.phone:B1")
    assert ring.seal(None, aad="x") is None
    assert ring.open(None, aad="x") is None
    blob = ring.seal_bytes(b"%PDF-1.4 ...", aad="letters.pdf:C1")
    assert ring.open_bytes(blob, aad="letters.pdf:C1") == b"%PDF-1.4 ..."


def test_rotation_old_values_open_new_ones_use_the_active_key() -> None:
    old = KeyRing.parse(f"k1:{_key(1)}")
    sealed_old = old.seal("a@example.com", aad="c")
    assert sealed_old is not None
    ring = KeyRing.parse(f"k1:{_key(1)},k2:{_key(2)}", "k2")
    assert ring.open(sealed_old, aad="c") == "a@example.com"
    sealed_new = ring.seal("a@example.com", aad="c")
    assert sealed_new is not None
    assert ring.key_id(sealed_new) == "k2"
    assert ring.key_id(sealed_old) == "k1"
    with pytest.raises(PiiError, match="not in the key ring"):
        KeyRing.parse(f"k1:{_key(1)}").open(sealed_new, aad="c")


@pytest.mark.parametrize(
    ("spec", "active", "message"),
    [
        ("", None, "empty"),
        ("k1", None, "<key id>"),
        ("k1:not base64!", None, "base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", None, "32 bytes"),
        (f"k1:{_key(1)}", "k9", "not in the key ring"),
        (f"bad id:{_key(1)}", None, "key id"),
    ],
)
def test_malformed_key_rings_are_refused(spec: str, active: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing.parse(spec, active)


# --- request size --------------------------------------------------------------------------


@pytest.fixture
async def limited() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=1024)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as http:
        yield http


async def test_bodies_over_the_limit_are_refused_with_413(limited: httpx.AsyncClient) -> None:
    assert (await limited.post("/echo", content=b"x" * 1024)).json() == {"size": 1024}
    refused = await limited.post("/echo", content=b"x" * 1025)
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(4):
            yield b"y" * 400

    streamed = await limited.post("/echo", content=chunks())
    assert streamed.status_code == 413
    assert streamed.headers["content-type"].startswith("application/problem+json")


# --- errors ----------------------------------------------------------------------------------


async def test_an_unreachable_database_is_a_503_to_retry_and_anything_else_a_bare_500() -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/db")
    async def db() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("secret detail"))

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret detail")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        down, broken = await http.get("/db"), await http.get("/bug")
    assert (down.status_code, down.headers["retry-after"]) == (503, "1")
    assert down.headers["content-type"] == problems.PROBLEM_JSON
    assert broken.status_code == 500
    assert "secret" not in down.text + broken.text
