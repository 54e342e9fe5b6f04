"""REST: delivery receipts the SMS and voice providers post by callback.

Authentication is the provider's signature, not a bearer token: a provider's callback
cannot take part in our OAuth2 client-credentials flow, but it can sign. Every request
carries ``X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` with the secret that
provider was given (``NOTIFIER_DELIVERY_RECEIPT_SECRETS``); the signature is checked, in
constant time, before the body is looked at. No secret for the provider named in the path,
no signature, or a wrong one: 401 problem. A body that is signed but not a receipt: 422
problem. A receipt already taken, a late one, or one for no attempt of ours is answered 200
with what it did (``duplicate``, ``late``, ``unmatched``), never an error, so the provider
does not retry it forever.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from notifier.app.receipts import RECEIPTS, take_receipt
from notifier.domain.receipts import Receipt
from notifier.settings import NotifierSettings

_ID = r"^[A-Za-z0-9._:-]{1,64}$"
_REF = r"^[\x21-\x7e]{1,200}$"
# No pattern: a path that names no provider we have a secret for is a 401 like any other
# unsigned call (authentication comes before any validation).
ProviderPath = Annotated[str, Path(examples=["sms-provider"])]
Ref = Annotated[str, StringConstraints(pattern=_REF)]

_SIGNATURE = APIKeyHeader(
    name="X-Signature",
    scheme_name="providerSignature",
    auto_error=False,
    description="sha256=<hex HMAC-SHA256 of the raw request body with the provider's "
    "receipt secret>",
)


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipt_id: Ref = Field(
        description="The provider's id of this receipt: a receipt "
        "posted again with the same id does nothing twice"
    )
    reference: Annotated[str, StringConstraints(pattern=_ID)] | None = Field(
        default=None,
        description="Our reference: the command id sent as the reference and idempotency key",
    )
    message_id: Ref | None = Field(
        default=None, description="The provider's id of the message or call"
    )
    status: Literal["delivered", "failed", "answered", "unanswered"]
    occurred_at: AwareDatetime


class ReceiptTaken(BaseModel):
    effect: Literal["applied", "duplicate", "late", "unmatched"] = Field(
        description="applied to its attempt; duplicate (taken before, nothing done); late "
        "(the attempt had its result already); unmatched (no such attempt)"
    )


def _refused(provider: str, detail: str) -> ProblemError:
    RECEIPTS.labels(provider, "refused").inc()
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": 'Signature realm="delivery-receipts"'},
    )


async def _verified(
    request: Request, provider: ProviderPath, signature: Annotated[str | None, Security(_SIGNATURE)]
) -> str:
    """The provider named in the path, once the body's signature is proven its."""
    settings: NotifierSettings = request.app.state.runtime.settings
    secret = settings.receipt_secrets().get(provider)
    if secret is None or signature is None:
        # One answer for both: which providers exist is not for an unsigned caller to learn.
        raise _refused(
            "unknown" if secret is None else provider, "a signed delivery receipt is required"
        )
    expected = "sha256=" + hmac.new(secret, await request.body(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise _refused(provider, "the signature does not match the body")
    return provider


router = APIRouter(prefix="/v1")


@router.post(
    "/delivery-receipts/{provider}",
    response_model=ReceiptTaken,
    responses={
        401: {
            "description": "No receipt secret for this provider, or no or a wrong signature",
            "content": PROBLEM_RESPONSES[422]["content"],
        },
        422: PROBLEM_RESPONSES[422],
    },
    tags=["delivery receipts"],
    summary="A provider reports what became of a message or call",
)
async def post_delivery_receipt(
    request: Request,
    body: ReceiptIn,
    provider: Annotated[str, Depends(_verified)],
) -> ReceiptTaken:
    policy_version: str = request.app.state.runtime.state["policy"].version
    effect = await take_receipt(
        request.app.state.runtime.state["uow"],
        Receipt(
            provider=provider,
            receipt_id=body.receipt_id,
            reference=body.reference,
            provider_ref=body.message_id,
            status=body.status,
            occurred_at=body.occurred_at,
        ),
        policy_version=policy_version,
    )
    return ReceiptTaken(effect=effect)
