"""Authentication and authorisation: OAuth2 client-credentials bearer JWTs.

Every route except ``/livez``, ``/readyz`` and ``/metrics`` depends on :func:`require`,
which verifies the ``Authorization: Bearer`` token (signature against the JWKS, ``exp``,
``nbf``, ``aud`` and, when configured, ``iss``) and checks one scope. The answer to a
caller without a valid token is 401, to one without the scope 403, both RFC 9457 problem
documents with an RFC 6750 ``WWW-Authenticate`` header.

Keys come from a JWKS URL (fetched with httpx, cached for ``auth_jwks_cache_s``; an unknown
``kid`` refetches at most every 30 s, which is how a rotated key is picked up), from a
static JWKS (inline or a file), or, in ``dev`` and ``test`` only, from the built-in
development key that :func:`dev_token` signs with. Only asymmetric algorithms are
accepted, so nobody who merely holds the public keys can mint a token.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, Request, Security
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.security import OAuth2, SecurityScopes
from starlette.requests import HTTPConnection

from collections_kit.problems import ProblemError
from collections_kit.settings import ServiceSettings

log = logging.getLogger(__name__)

# Scopes and what they allow.
SCOPES: dict[str, str] = {
    "cases:read": "Read cases, timelines, balances, contact decisions and preferences",
    "cases:write": "Change cases: holds, resumes, arrangements, escalations, legal "
    "milestones, closures",
    "contacts:write": "Store contact details; record opt-outs and do-not-contact",
    "pii:read": "See personal data (contact details) unmasked",
    "contacts:permit": "Ask for a contact permit before contacting a person (collector or "
    "agency) and report the contact's result",
    "admin": "Operational reports: portfolio summaries, reconciliation runs",
    "collections:agency": "A collection agency (the token's subject): its placements and the "
    "cases placed with it, nothing else",
    "collections:work": "Work the queues as a collector: lease the next task, record its "
    "result, release or renew the lease; read queue depths",
}
ALL_SCOPES = tuple(SCOPES)
# Documentation only: clients get tokens from the organisation's authorisation server.
TOKEN_URL = "https://auth.lender.example/oauth2/token"  # noqa: S105 (a URL, not a secret)

# The development key: derived from a fixed, public seed, so every process of a local run
# (and every test) agrees on it without a key file. Never trusted when environment=prod.
DEV_KID = "collections-dev-1"
DEV_ISSUER = "https://auth.collections.dev"
_DEV_SEED = b"collections-kit development signing key; public, never for production"
_REFETCH_UNKNOWN_KID_S = 30.0
_MAX_TOKEN_CHARS = 8192
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Principal:
    """Who called: the token's subject (the actor on audit trails), its scopes, and the
    groups the organisation's authorisation server puts it in (RFC 9068 ``groups``: a
    collector's team, language desk or legal staff; policy data decides what they allow)."""

    subject: str
    scopes: frozenset[str]
    groups: frozenset[str] = frozenset()

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class AuthError(Exception):
    def __init__(
        self, status: int, error: str | None, detail: str, scope: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.scope = scope

    def problem(self) -> ProblemError:
        challenge = 'Bearer realm="collections"'
        if self.error:
            challenge += f', error="{self.error}"'
        if self.scope:
            challenge += f', scope="{self.scope}"'
        if self.status == 401:
            title, kind = "Authentication required", "unauthorized"
        else:
            title, kind = "Insufficient scope", "forbidden"
        return ProblemError(
            self.status,
            title,
            self.detail,
            type_=f"https://collections.example/problems/{kind}",
            headers={"WWW-Authenticate": challenge},
        )


# --- the development key pair --------------------------------------------------------------


@cache
def _dev_private_key() -> ec.EllipticCurvePrivateKey:
    secret = int.from_bytes(hashlib.sha256(_DEV_SEED).digest(), "big")
    return ec.derive_private_key(secret, ec.SECP256R1())


def dev_jwks() -> dict[str, Any]:
    """The public half of the development key, as a JWKS document."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(_dev_private_key().public_key()))
    jwk.update({"kid": DEV_KID, "alg": "ES256", "use": "sig"})
    return {"keys": [jwk]}


def dev_token(
    scopes: Iterable[str] = ALL_SCOPES,
    subject: str = "dev-client",
    *,
    audience: str | Iterable[str] = ("workflow", "ledger-sync", "notifier"),
    issuer: str = DEV_ISSUER,
    expires_in: float = 3600.0,
    now: float | None = None,
    kid: str = DEV_KID,
    groups: Iterable[str] = (),
) -> str:
    """A token signed with the development key, for the demo, chaos runs and tests."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": int(issued),
        "nbf": int(issued) - 1,
        "exp": int(issued + expires_in),
        "scope": " ".join(scopes),
        "client_id": subject,
    }
    if groups:
        claims["groups"] = list(groups)
    return jwt.encode(claims, _dev_private_key(), algorithm="ES256", headers={"kid": kid})


def dev_headers(
    scopes: Iterable[str] = ALL_SCOPES, subject: str = "dev-client", **kwargs: Any
) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev_token(scopes, subject, **kwargs)}"}


# --- key sources ---------------------------------------------------------------------------


def _keys_of(document: Any) -> dict[str, jwt.PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("skipping an unusable key in the JWKS", extra={"kid": entry.get("kid")})
            continue
        keys[str(entry.get("kid", ""))] = key
    return keys


class StaticKeys:
    def __init__(self, document: Any) -> None:
        self._keys = _keys_of(document)

    @property
    def kids(self) -> set[str]:
        return set(self._keys)

    async def key(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)


class RemoteKeys:
    """A JWKS URL, cached for ``ttl_s``; an unknown kid refetches, rate-limited."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._client = client
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        client = self._client or httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))
        try:
            response = await client.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            self._keys = _keys_of(response.json())
            self._fetched_at = self._clock()
        finally:
            if self._client is None:
                await client.aclose()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        async with self._lock:
            age = None if self._fetched_at is None else self._clock() - self._fetched_at
            stale = age is None or age >= self._ttl_s
            unknown = kid not in self._keys and (age is None or age >= _REFETCH_UNKNOWN_KID_S)
            if stale or unknown:
                try:
                    await self._fetch()
                except (httpx.HTTPError, ValueError) as exc:
                    # Keep serving the keys we have; a token under an unknown kid fails.
                    log.warning("JWKS fetch failed: %s", type(exc).__name__)
                    if self._fetched_at is None:
                        raise AuthError(
                            401, "invalid_token", "The signing keys cannot be fetched now."
                        ) from None
            return self._keys.get(kid)


KeySource = StaticKeys | RemoteKeys


def key_source(settings: ServiceSettings) -> KeySource:
    if settings.auth_jwks_url:
        return RemoteKeys(settings.auth_jwks_url, settings.auth_jwks_cache_s)
    if settings.auth_jwks_json:
        source = StaticKeys(json.loads(settings.auth_jwks_json))
    elif settings.auth_jwks_file:
        source = StaticKeys(json.loads(settings.auth_jwks_file.read_text()))
    elif settings.environment in ("dev", "test"):
        return StaticKeys(dev_jwks())
    else:
        raise ValueError("no signing keys configured")
    if settings.environment == "prod" and DEV_KID in source.kids:
        raise ValueError("the development signing key is not trusted in production")
    return source


# --- verification --------------------------------------------------------------------------


class TokenVerifier:
    def __init__(self, settings: ServiceSettings, keys: KeySource | None = None) -> None:
        self._keys = keys or key_source(settings)
        self._audience = settings.audience()
        self._issuer = settings.auth_issuer
        self._algorithms = list(settings.auth_algorithms)
        self._leeway = settings.auth_leeway_s

    async def verify(self, token: str) -> Principal:
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthError(401, "invalid_token", "The token is too long.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "The token is malformed.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:
            raise AuthError(401, "invalid_token", "The token's algorithm is not accepted.")
        key = await self._keys.key(str(kid)) if isinstance(kid, str) else None
        if key is None:
            raise AuthError(401, "invalid_token", "The token's signing key is unknown.")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid_token", "The token has expired.") from None
        except jwt.InvalidAudienceError:
            raise AuthError(
                401, "invalid_token", "The token is not meant for this service (audience)."
            ) from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "invalid_token", "The token's issuer is not trusted.") from None
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "The token is not valid.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            raise AuthError(401, "invalid_token", "The token's subject is not usable.")
        return Principal(subject=subject, scopes=_scopes_of(claims), groups=_groups_of(claims))


def _scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    # RFC 8693 `scope` (space-separated); some servers send `scp` as a list instead.
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


def _groups_of(claims: dict[str, Any]) -> frozenset[str]:
    # RFC 9068 section 2.2.3.1: a JSON array of group names. Anything else grants nothing
    # (a group only ever widens what a caller may do, so an unreadable claim must not).
    raw = claims.get("groups")
    if isinstance(raw, list):
        return frozenset(g for g in raw if isinstance(g, str) and g)
    return frozenset()


# --- FastAPI -------------------------------------------------------------------------------


class _ClientCredentials(OAuth2):
    """Documents the scheme (client credentials, scopes) in OpenAPI; reads the header."""

    def __init__(self) -> None:
        super().__init__(
            flows=OAuthFlows(
                clientCredentials=OAuthFlowClientCredentials(tokenUrl=TOKEN_URL, scopes=SCOPES)
            ),
            scheme_name="oauth2",
            auto_error=False,
            description="OAuth2 client-credentials bearer JWT (`Authorization: Bearer ...`).",
        )

    async def __call__(self, request: HTTPConnection) -> str | None:
        return request.headers.get("Authorization")


_scheme = _ClientCredentials()


async def _authenticate(
    request: Request, security_scopes: SecurityScopes, authorization: str | None = Security(_scheme)
) -> Principal:
    verifier: TokenVerifier | None = getattr(request.app.state, "verifier", None)
    if verifier is None:
        raise AuthError(401, None, "Authentication is not configured.").problem()
    if not authorization:
        raise AuthError(401, None, "A bearer token is required.").problem()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(
            401, "invalid_request", "Use the Authorization: Bearer <token> scheme."
        ).problem()
    try:
        principal = await verifier.verify(token.strip())
    except AuthError as exc:
        raise exc.problem() from None
    missing = [s for s in security_scopes.scopes if not principal.has(s)]
    if missing:
        raise AuthError(
            403,
            "insufficient_scope",
            f"This needs the scope {' '.join(missing)}.",
            scope=" ".join(missing),
        ).problem()
    request.state.principal = principal
    return principal


def _required_scopes(dependant: Any) -> list[str] | None:
    """The scopes the route's :func:`require` or :func:`require_any` accepts (one of them
    is enough); None if the route needs no token."""
    for sub in getattr(dependant, "dependencies", ()):
        if getattr(sub, "call", None) is _authenticate:
            return list(sub.own_oauth_scopes or ())
        if getattr(sub, "call", None) in _ANY_OF:
            return list(_ANY_OF[sub.call])
        found = _required_scopes(sub)
        if found is not None:
            return found
    return None


async def refusal_before_input(request: Request) -> ProblemError | None:
    """What a caller is told before any of its input is judged: 401 without a valid token,
    403 without the scope. FastAPI parses the body (and runs app-wide dependencies) before a
    route's own dependencies, so a malformed body without a token got 400/422; the problem
    handlers ask this first (collections_kit.problems.install)."""
    route = request.scope.get("route")
    scopes = _required_scopes(getattr(route, "dependant", None))
    if scopes is None:
        return None
    try:
        principal = await _authenticate(
            request, SecurityScopes([]), request.headers.get("Authorization")
        )
        _holds_one_of(principal, scopes)
    except ProblemError as refused:
        return refused
    return None


def require(scope: str) -> Any:
    """A route dependency: the caller's :class:`Principal`, which must hold ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope}")
    return Security(_authenticate, scopes=[scope])


def _holds_one_of(principal: Principal, scopes: list[str]) -> None:
    if scopes and not any(principal.has(s) for s in scopes):
        needed = " ".join(scopes)
        what = f"the scope {needed}" if len(scopes) == 1 else f"one of the scopes {needed}"
        raise AuthError(403, "insufficient_scope", f"This needs {what}.", scope=needed).problem()


# The dependencies require_any made, with the scopes each accepts.
_ANY_OF: dict[Callable[..., Any], tuple[str, ...]] = {}


def require_any(*scopes: str) -> Any:
    """A route dependency: the caller's :class:`Principal`, which must hold at least one of
    ``scopes`` (a route several kinds of caller use; the route tells them apart by scope).
    OpenAPI lists one security requirement per scope: alternatives, any one enough."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or len(scopes) < 2:
        raise ValueError(f"require_any needs two or more known scopes, not {scopes}")

    async def one_of(request: Request, **headers: str | None) -> Principal:
        principal = await _authenticate(request, SecurityScopes([]), headers["authorization_0"])
        _holds_one_of(principal, list(scopes))
        return principal

    # One parameter per scope, each the bearer scheme with that scope: FastAPI documents
    # each as its own requirement. All read the same Authorization header.
    one_of.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            *(
                inspect.Parameter(
                    f"authorization_{n}",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=Security(_scheme, scopes=[scope]),
                    annotation=str | None,
                )
                for n, scope in enumerate(scopes)
            ),
        ],
        return_annotation=Principal,
    )
    _ANY_OF[one_of] = scopes
    return Depends(one_of)


def alternative_scopes(route: Any) -> tuple[str, ...] | None:
    """The scopes a route made with :func:`require_any` accepts, any one enough; None for
    any other route. FastAPI merges every scope of one scheme into one requirement (all
    needed), so the runtime rewrites these operations' ``security`` as alternatives."""
    for sub in getattr(getattr(route, "dependant", None), "dependencies", ()):
        if getattr(sub, "call", None) in _ANY_OF:
            return _ANY_OF[sub.call]
    return None
