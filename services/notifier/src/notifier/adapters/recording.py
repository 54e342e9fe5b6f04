"""The stand-in for the SMS and voice providers when none is configured: it records what
it would send.

It behaves like a provider that dedupes on the command id: recording one command twice
keeps the first, so a retry after an unknown outcome is harmless here as it must be there.
No call is placed, so nobody answers one: a recorded call reports ``unanswered``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import Clock
from collections_kit.db import insert_rows
from collections_kit.pii import KeyRing
from notifier.adapters.tables import recorded_sends
from notifier.app.ports import Delivery, OutgoingMessage, SendError
from notifier.domain.in_doubt import Found, NotFound
from notifier.domain.model import ChannelName

log = logging.getLogger(__name__)


# Sealed at rest (collections_kit.pii), each bound to its column and command.
SEALED = ("address", "subject", "body")


def _aad(column: str, command_id: str) -> str:
    return f"recorded_sends.{column}:{command_id}"


@dataclass(frozen=True)
class RecordedSend:
    command_id: str
    channel: str
    address: str
    subject: str
    body: str


def open_recorded(row: Any, ring: KeyRing) -> RecordedSend:
    """A ``recorded_sends`` row with its personal data opened."""
    clear = {c: ring.open(getattr(row, c), aad=_aad(c, row.command_id)) or "" for c in SEALED}
    return RecordedSend(command_id=row.command_id, channel=row.channel, **clear)


class RecordingChannel:
    def __init__(self, engine: AsyncEngine, clock: Clock, ring: KeyRing) -> None:
        self._engine = engine
        self._clock = clock
        self._ring = ring

    async def send(self, message: OutgoingMessage) -> Delivery:
        outcome = (await self.send_many([message]))[0]
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[Delivery | SendError]:
        """A pass's messages in one transaction and one statement, like a provider's bulk
        call: either all are recorded or none is (and each is retried)."""
        now = self._clock.now()
        try:
            # Its own transaction, like a call to a remote provider would be.
            async with self._engine.begin() as conn:
                await insert_rows(
                    conn,
                    recorded_sends,
                    [self._row(m, now) for m in messages],
                    on_conflict="ON CONFLICT (command_id) DO NOTHING",
                )
        except Exception as exc:
            # The statement's parameters hold the address: only the error's kind goes on.
            error = SendError(f"recorder_unavailable:{type(exc).__name__}", permanent=False)
            return [error] * len(messages)
        # One line per call: the dispatcher logs each contact sent ("contact sent").
        log.info("sends recorded", extra={"count": len(messages)})
        return [Delivery("unanswered" if m.channel == "voice" else "sent") for m in messages]

    async def lookup(self, command_id: str, channel: ChannelName) -> Found | NotFound:
        """Whether the command was recorded (a provider's lookup by idempotency key)."""
        try:
            async with self._engine.connect() as conn:
                known = await conn.scalar(
                    select(recorded_sends.c.command_id).where(
                        recorded_sends.c.command_id == command_id
                    )
                )
        except Exception as exc:
            raise SendError(f"recorder_unavailable:{type(exc).__name__}", permanent=False) from None
        if known is None:
            return NotFound()
        return Found("unanswered" if channel == "voice" else "sent")

    def _row(self, message: OutgoingMessage, now: datetime) -> dict[str, Any]:
        seal, command_id = self._ring.seal, message.command_id
        return {
            "command_id": command_id,
            "loan_id": message.loan_id,
            "channel": message.channel,
            "recipient": message.recipient,
            "language": message.language,
            "template": message.template,
            "address": seal(message.address, aad=_aad("address", command_id)),
            "subject": seal(message.subject, aad=_aad("subject", command_id)),
            "body": seal(message.body, aad=_aad("body", command_id)),
            "recorded_at": now,
        }
