"""E-mail over SMTP (aiosmtplib).

The provider's error texts often quote the recipient's address, so they are turned into a
code (``smtp_550``, ``smtp_unreachable``) here and never passed on, logged or stored.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from notifier.app.ports import Delivery, OutgoingMessage, SendError

log = logging.getLogger(__name__)


class SmtpChannel:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        timeout_s: float,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool = False,
        start_tls: bool | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._timeout_s = timeout_s
        self._username = username
        self._password = password
        self._use_tls = use_tls
        self._start_tls = start_tls
        self._domain = sender.rpartition("@")[2] or "notifier.invalid"

    def compose(self, message: OutgoingMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self._sender
        email["To"] = message.address
        email["Subject"] = message.subject
        email["Date"] = formatdate(usegmt=True)
        # The command id makes the Message-ID: a retry after a transient refusal carries the
        # same one. A relay cannot be asked whether it has it, so a hand-over a crash left
        # unrecorded is never retried (in doubt: notifier.domain.in_doubt).
        email["Message-ID"] = f"<{message.command_id}@{self._domain}>"
        email["X-Collections-Command-Id"] = message.command_id
        email["Auto-Submitted"] = "auto-generated"
        email.set_content(message.body)
        return email

    async def send(self, message: OutgoingMessage) -> Delivery:
        email = self.compose(message)
        try:
            await aiosmtplib.send(
                email,
                hostname=self._host,
                port=self._port,
                timeout=self._timeout_s,
                username=self._username,
                password=self._password,
                use_tls=self._use_tls,
                start_tls=self._start_tls,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            raise SendError(
                f"smtp_{codes[0] if codes else 550}", permanent=all(c >= 500 for c in codes)
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is "try again later", 5xx is final.
            raise SendError(f"smtp_{exc.code}", permanent=exc.code >= 500) from None
        except aiosmtplib.SMTPConnectError as exc:
            # Never connected (refused, unreachable, no greeting in time): nothing sent.
            raise SendError(f"smtp_unreachable:{type(exc).__name__}", permanent=False) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Dropped or timed out mid-session, maybe after the relay had the message.
            raise SendError(
                f"smtp_interrupted:{type(exc).__name__}", permanent=False, outcome_unknown=True
            ) from None
        log.info(
            "e-mail handed to the SMTP relay",
            extra={"command_id": message.command_id, "loan_id": message.loan_id},
        )
        return Delivery("sent")
