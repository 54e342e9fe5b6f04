"""Bearer JWT authentication: every refusal is problem+json with an RFC 6750 challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from collections_kit import problems
from collections_kit.auth import (
    DEV_ISSUER,
    DEV_KID,
    Principal,
    RemoteKeys,
    TokenVerifier,
    dev_jwks,
    dev_token,
    require,
    require_any,
)
from collections_kit.settings import ServiceSettings

SETTINGS = ServiceSettings(service_name="workflow")


def app_with(settings: ServiceSettings = SETTINGS) -> FastAPI:
    app = FastAPI()
    app.state.verifier = TokenVerifier(settings)
    problems.install(app)

    @app.get("/read")
    async def read(who: Annotated[Principal, require("cases:read")]) -> dict[str, Any]:
        return {"subject": who.subject, "scopes": sorted(who.scopes)}

    @app.post("/write")
    async def write(who: Annotated[Principal, require("cases:write")]) -> dict[str, str]:
        return {"actor": who.subject}

    @app.post("/either")
    async def either(
        who: Annotated[Principal, require_any("cases:write", "collections:agency")],
    ) -> dict[str, str]:
        return {"actor": who.subject}

    return app


async def call(
    method: str,
    path: str,
    token: str | None = None,
    app: FastAPI | None = None,
    raw: str | None = None,
) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if raw is not None:
        headers["Authorization"] = raw
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app or app_with()), base_url="http://svc"
    ) as http:
        return await http.request(method, path, headers=headers)


def assert_refused(response: httpx.Response, status: int, error: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["instance"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if error:
        assert f'error="{error}"' in challenge
    else:
        assert "error=" not in challenge


async def test_a_valid_token_passes_and_names_the_caller() -> None:
    response = await call("GET", "/read", dev_token(["cases:read"], "agent:li.wei"))
    assert response.status_code == 200
    assert response.json() == {"subject": "agent:li.wei", "scopes": ["cases:read"]}


async def test_a_missing_token_is_refused() -> None:
    assert_refused(await call("GET", "/read"), 401, None)


@pytest.mark.parametrize("raw", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "token abc"])
async def test_a_malformed_authorization_header_is_refused(raw: str) -> None:
    assert_refused(await call("GET", "/read", raw=raw), 401, "invalid_request")


async def test_an_expired_token_is_refused() -> None:
    token = dev_token(["cases:read"], now=time.time() - 7200, expires_in=3600)
    response = await call("GET", "/read", token)
    assert_refused(response, 401, "invalid_token")
    assert "expired" in response.json()["detail"]


async def test_a_token_for_another_audience_is_refused() -> None:
    response = await call("GET", "/read", dev_token(["cases:read"], audience="notifier"))
    assert_refused(response, 401, "invalid_token")
    assert "audience" in response.json()["detail"]


async def test_a_token_without_the_scope_is_forbidden() -> None:
    response = await call("POST", "/write", dev_token(["cases:read", "pii:read"]))
    assert_refused(response, 403, "insufficient_scope")
    assert 'scope="cases:write"' in response.headers["www-authenticate"]


async def test_any_one_of_alternative_scopes_is_enough_and_none_is_forbidden() -> None:
    for scopes in (["cases:write"], ["collections:agency"], ["cases:write", "admin"]):
        response = await call("POST", "/either", dev_token(scopes, "agency-north"))
        assert response.status_code == 200, (scopes, response.text)
    assert_refused(await call("POST", "/either"), 401, None)
    response = await call("POST", "/either", dev_token(["cases:read", "collections:work"]))
    assert_refused(response, 403, "insufficient_scope")
    assert 'scope="cases:write collections:agency"' in response.headers["www-authenticate"]
    assert "one of the scopes" in response.json()["detail"]
    with pytest.raises(ValueError, match="two or more known scopes"):
        require_any("cases:write", "no:such")


async def test_the_issuer_is_checked_when_configured() -> None:
    app = app_with(ServiceSettings(service_name="workflow", auth_issuer=DEV_ISSUER))
    assert (await call("GET", "/read", dev_token(["cases:read"]), app)).status_code == 200
    assert_refused(
        await call("GET", "/read", dev_token(["cases:read"], issuer="https://evil"), app),
        401,
        "invalid_token",
    )


async def test_a_token_signed_by_another_key_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(
        {"sub": "x", "aud": "workflow", "exp": int(time.time()) + 60, "scope": "cases:read"},
        other,
        algorithm="ES256",
        headers={"kid": DEV_KID},
    )
    assert_refused(await call("GET", "/read", forged), 401, "invalid_token")


async def test_unsigned_and_symmetric_tokens_are_refused() -> None:
    claims = {"sub": "x", "aud": "workflow", "exp": int(time.time()) + 60, "scope": "cases:read"}
    unsigned = (
        _b64(json.dumps({"alg": "none", "kid": DEV_KID}).encode())
        + "."
        + _b64(json.dumps(claims).encode())
        + "."
    )
    assert_refused(await call("GET", "/read", unsigned), 401, "invalid_token")
    # HS256 keyed with the public key: the classic algorithm-confusion forgery.
    public = json.dumps(dev_jwks()["keys"][0]).encode()
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "kid": DEV_KID}).encode())
        + "."
        + _b64(json.dumps(claims).encode())
    )
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    assert_refused(await call("GET", "/read", f"{signing_input}.{_b64(mac)}"), 401, "invalid_token")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_garbage_and_oversized_tokens_are_refused() -> None:
    assert_refused(await call("GET", "/read", "not.a.jwt"), 401, "invalid_token")
    assert_refused(await call("GET", "/read", "x" * 9000), 401, "invalid_token")


async def test_a_token_without_subject_or_expiry_is_refused() -> None:
    from collections_kit.auth import _dev_private_key

    for claims in (
        {"aud": "workflow", "exp": int(time.time()) + 60},
        {"sub": "x", "aud": "workflow"},
    ):
        token = jwt.encode(
            {**claims, "scope": "cases:read"},
            _dev_private_key(),
            algorithm="ES256",
            headers={"kid": DEV_KID},
        )
        assert_refused(await call("GET", "/read", token), 401, "invalid_token")


async def test_scp_list_claims_are_understood() -> None:
    from collections_kit.auth import _dev_private_key

    token = jwt.encode(
        {"sub": "svc", "aud": "workflow", "exp": int(time.time()) + 60, "scp": ["cases:read"]},
        _dev_private_key(),
        algorithm="ES256",
        headers={"kid": DEV_KID},
    )
    assert (await call("GET", "/read", token)).status_code == 200


async def test_the_groups_claim_is_read_and_anything_unreadable_grants_nothing() -> None:
    from collections_kit.auth import _dev_private_key

    verifier = TokenVerifier(SETTINGS)
    who = await verifier.verify(dev_token(["collections:work"], "c:1", groups=["legal", "zh-CN"]))
    assert who.groups == frozenset({"legal", "zh-CN"})
    assert (await verifier.verify(dev_token(["collections:work"], "c:2"))).groups == frozenset()
    base = {"sub": "c:3", "aud": "workflow", "exp": int(time.time()) + 60, "scope": "x"}
    for odd in ("legal", {"legal": True}, [1, None, ""], 7):
        token = jwt.encode(
            {**base, "groups": odd}, _dev_private_key(), algorithm="ES256", headers={"kid": DEV_KID}
        )
        assert (await verifier.verify(token)).groups == frozenset()


async def test_keys_from_a_jwks_url_are_cached_and_a_new_kid_is_fetched() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    rsa_jwk.update({"kid": "rotated-2", "alg": "RS256"})
    served = {"keys": list(dev_jwks()["keys"])}
    fetches = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetches.append(request.url)
        return httpx.Response(200, json=served)

    now = [1000.0]
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    keys = RemoteKeys("https://auth.example/jwks", ttl_s=300, client=client, clock=lambda: now[0])
    verifier = TokenVerifier(
        ServiceSettings(service_name="workflow", auth_jwks_url="https://auth.example/jwks"),
        keys=keys,
    )
    for _ in range(3):
        assert (await verifier.verify(dev_token(["cases:read"]))).subject == "dev-client"
    assert len(fetches) == 1
    # The authorisation server rotates to a new key: its kid is unknown, so it is fetched
    # (at most every 30 s, so random kids cannot make us hammer the server).
    served["keys"].append(rsa_jwk)
    token = jwt.encode(
        {"sub": "svc", "aud": "workflow", "exp": int(time.time()) + 60, "scope": "cases:read"},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "rotated-2"},
    )
    with pytest.raises(Exception, match="unknown"):
        await verifier.verify(token)
    assert len(fetches) == 1
    now[0] += 31
    assert (await verifier.verify(token)).subject == "svc"
    assert len(fetches) == 2
    await client.aclose()


def test_prod_refuses_the_development_key_and_a_missing_issuer() -> None:
    with pytest.raises(ValueError, match="auth_jwks_url"):
        ServiceSettings(environment="prod")
    with pytest.raises(ValueError, match="auth_issuer"):
        ServiceSettings(environment="prod", auth_jwks_url="https://auth.example/jwks")
    with pytest.raises(ValueError, match="https"):
        ServiceSettings(
            environment="prod",
            auth_jwks_url="http://auth.example/jwks",
            auth_issuer="https://auth.example",
        )
    settings = ServiceSettings(
        environment="prod",
        auth_jwks_json=json.dumps(dev_jwks()),
        auth_issuer="https://auth.example",
    )
    with pytest.raises(ValueError, match="development signing key"):
        TokenVerifier(settings)
    with pytest.raises(ValueError, match="not allowed"):
        ServiceSettings(auth_algorithms=("HS256",))
