"""The stand-in for the SMS and voice providers when none is configured: it records what
it would send.

It behaves like a provider that dedupes on the command id: recording one command twice
keeps the first, so a retry after an unknown outcome is harmless here as it must be there.
No call is placed, so nobody answers one: a recorded call reports ``unanswered``.
"""

from __future__ import annotations

import logging

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import Clock
from notifier.adapters.tables import recorded_sends
from notifier.app.ports import Delivery, OutgoingMessage, SendError

log = logging.getLogger(__name__)


class RecordingChannel:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> Delivery:
        try:
            # Its own transaction, like a call to a remote provider would be.
            async with self._engine.begin() as conn:
                await conn.execute(pg_insert(recorded_sends).values(
                    command_id=message.command_id, loan_id=message.loan_id,
                    channel=message.channel, recipient=message.recipient,
                    language=message.language, template=message.template,
                    address=message.address, subject=message.subject, body=message.body,
                    recorded_at=self._clock.now(),
                ).on_conflict_do_nothing(index_elements=[recorded_sends.c.command_id]))
        except Exception as exc:
            # The statement's parameters hold the address: only the error's kind goes on.
            raise SendError(f"recorder_unavailable:{type(exc).__name__}",
                            permanent=False) from None
        log.info("send recorded", extra={"command_id": message.command_id,
                                         "loan_id": message.loan_id,
                                         "channel": message.channel})
        return Delivery("unanswered" if message.channel == "voice" else "sent")
