"""SMS and voice through an HTTP provider API (httpx).

The provider's API, as this adapter speaks it (and the loopback double in
``tests/provider_double.py`` answers it):

- ``POST {base}/v1/messages`` ``{"to", "text", "reference", "language"}`` -> ``{"id", "status"}``
  with status ``accepted`` or ``delivered``;
- ``POST {base}/v1/calls`` ``{"to", "script", "reference", "language"}`` -> ``{"id", "status"}``
  with status ``answered`` or ``unanswered``;
- every request carries ``Idempotency-Key: <command_id>``: the provider answers a repeated
  key with the first answer and does not send again, so a retry (ours, after a timeout or a
  5xx) never reaches the person twice;
- ``GET {base}/v1/messages/by-reference/{command_id}`` (``/v1/calls/...`` for a call) ->
  ``{"id", "status"}`` or 404: whether the provider has the message. After a crash between
  the hand-over and its record the dispatcher asks this instead of sending again (a
  provider keeps idempotency keys for a while only, and a resend is a second contact if it
  forgot); see notifier.domain.in_doubt.

Timeouts, connection errors, 408, 409 (the same key still in progress), 425, 429 and 5xx
are retried here with exponential backoff and full jitter; any other 4xx is final. The
request body holds the number and the text, so neither the body nor the provider's error
text is ever logged or stored: only the status code and the error's kind are.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from notifier.app.ports import Delivery, OutgoingMessage, SendError
from notifier.domain.in_doubt import Found, NotFound
from notifier.domain.model import ChannelName, DeliveryStatus

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({408, 409, 425, 429})
_STATUS: dict[str, DeliveryStatus] = {
    "accepted": "sent",
    "queued": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "answered": "answered",
    "completed": "answered",
    "unanswered": "unanswered",
    "no_answer": "unanswered",
    "busy": "unanswered",
}


class HttpProviderChannel:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        max_tries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._max_tries = max_tries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()

    async def send(self, message: OutgoingMessage) -> Delivery:
        if message.channel == "sms":
            path, body = "/v1/messages", {"to": message.address, "text": message.body}
        elif message.channel == "voice":
            path, body = "/v1/calls", {"to": message.address, "script": message.body}
        else:
            raise SendError(f"provider_unsupported_channel:{message.channel}", permanent=True)
        body |= {"reference": message.command_id, "language": message.language}
        headers = {"Idempotency-Key": message.command_id}
        ids = {
            "command_id": message.command_id,
            "loan_id": message.loan_id,
            "channel": message.channel,
        }
        last = "provider_unreachable"
        for attempt in range(1, self._max_tries + 1):
            try:
                response = await self._client.post(path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                # The exception may quote the request; only its kind goes on.
                last = f"provider_unreachable:{type(exc).__name__}"
            else:
                if response.is_success:
                    return self._delivery(response, ids)
                code = response.status_code
                last = f"provider_{code}"
                if code < 500 and code not in _RETRYABLE:
                    raise SendError(last, permanent=True)
            if attempt < self._max_tries:
                delay = self._rng.uniform(
                    0, min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                )
                log.warning(
                    "provider call failed; retrying",
                    extra={**ids, "error": last, "try": attempt, "retry_in_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)
        raise SendError(last, permanent=False)

    async def lookup(self, command_id: str, channel: ChannelName) -> Found | NotFound:
        kind = {"sms": "messages", "voice": "calls"}.get(channel)
        if kind is None:
            raise SendError(f"provider_unsupported_channel:{channel}", permanent=True)
        try:
            response = await self._client.get(f"/v1/{kind}/by-reference/{command_id}")
        except httpx.HTTPError as exc:
            raise SendError(f"provider_unreachable:{type(exc).__name__}", permanent=False) from None
        if response.status_code == 404:
            return NotFound()
        if not response.is_success:
            raise SendError(f"provider_{response.status_code}", permanent=False)
        delivery = self._delivery(
            response, {"command_id": command_id, "channel": channel, "lookup": True}
        )
        return Found(delivery.status, delivery.provider_ref)

    def _delivery(self, response: httpx.Response, ids: dict[str, Any]) -> Delivery:
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        raw = str(payload.get("status", "")) if isinstance(payload, dict) else ""
        status: DeliveryStatus = _STATUS.get(raw, "sent")
        ref = payload.get("id") if isinstance(payload, dict) else None
        log.info("handed to the provider", extra={**ids, "delivery": status, "provider_ref": ref})
        return Delivery(status, str(ref) if ref is not None else None)
