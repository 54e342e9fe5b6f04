"""A real SMTP server on loopback that keeps what it is sent, for tests (not product code).

The notifier's ``SmtpChannel`` hands its e-mails to it as to a relay. It accepts every
message (250), or, built with ``refuse="550 5.1.1 <{address}> no such mailbox"``, refuses
every recipient with that reply (``{address}`` is the recipient's, as relays quote it).
Each message is kept as its recipients and raw content; :attr:`SmtpSink.message_ids` lists
their Message-IDs, the idempotency key an e-mail carries (more than one of a key would be
a double send). The root conftest's ``smtp_sink`` fixture runs one per test.
"""

from __future__ import annotations

from collections import Counter
from email.parser import BytesHeaderParser
from typing import Any, NamedTuple

from aiosmtpd.controller import Controller

from tests.support import unused_port


class Received(NamedTuple):
    recipients: list[str]
    content: bytes

    @property
    def message_id(self) -> str | None:
        """The Message-ID header (with its angle brackets), if the message has one."""
        value = BytesHeaderParser().parsebytes(self.content).get("Message-ID")
        return str(value).strip() if value is not None else None


class SmtpSink:
    def __init__(self, *, port: int | None = None, refuse: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or unused_port()
        self.messages: list[Received] = []
        self._refuse = refuse
        self._controller = Controller(self, hostname=self.host, port=self.port)

    @property
    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.recipients]

    @property
    def message_ids(self) -> list[str]:
        return [m.message_id for m in self.messages if m.message_id is not None]

    def doubled(self) -> dict[str, int]:
        """Message-IDs received more than once: must always be empty."""
        return {k: n for k, n in Counter(self.message_ids).items() if n > 1}

    # --- the SMTP handler (aiosmtpd calls these, its arguments by position) -----------------

    async def handle_RCPT(
        self, _server: Any, _session: Any, envelope: Any, address: str, _options: list[str]
    ) -> str:
        if self._refuse is not None:
            return self._refuse.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(Received(list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Serve on a thread of its own; returns once it accepts connections."""
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
