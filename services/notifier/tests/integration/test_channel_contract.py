"""Every channel adapter keeps the contract of the port (notifier.app.ports): the same tests
for e-mail over SMTP, SMS and voice through the HTTP provider, letters for print, and the
recorder that stands in for the provider when none is configured.

Each runs against its real far side: the SMTP sink, the provider double, PostgreSQL. A
channel's far side is also run down (a port nobody listens on) to see how it fails.

What the port promises, and so what is tested here of each:

- a send reaches the far side once, under the command id as its idempotency key (the
  Message-ID of an e-mail, the provider's Idempotency-Key, the print queue's and the
  recorder's key), and reports a status the port knows;
- a repeated send is harmless: a channel whose far side dedupes on the key keeps one copy;
  a relay cannot dedupe, so an e-mail sent again carries the same Message-ID;
- a far side that cannot be reached is a transient ``SendError``, with nothing handed over;
  one that refuses the message for good (where it can) is a permanent one;
- a ``LookupChannel`` (the provider, the recorder) tells a key it has from one it has not,
  and asking sends nothing; a ``BatchChannel`` (the recorder) gives one outcome per message;
- no error code, provider reference or log line carries the address, the name or the
  text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import FixedClock
from collections_kit.db import make_engine
from notifier.adapters.email import SmtpChannel
from notifier.adapters.letters import PrintChannel
from notifier.adapters.provider_http import HttpProviderChannel
from notifier.adapters.recording import RecordingChannel
from notifier.adapters.tables import letters, recorded_sends
from notifier.app.ports import (
    BatchChannel,
    Channel,
    Delivery,
    LookupChannel,
    OutgoingMessage,
    SendError,
)
from notifier.domain.in_doubt import Found, NotFound
from notifier.domain.model import ChannelName, DeliveryStatus
from notifier.entrypoints import bootstrap
from notifier.settings import NotifierSettings
from tests.provider_double import ProviderDouble
from tests.smtp_sink import SmtpSink
from tests.support import migrate, unused_port

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
SENDER = "collections@lender.example"
NAME = "Zhang Sanfeng"
SUBJECT = "Payment reminder 4711"
BODY = f"Dear {NAME}, a confidential reminder about loan 4711."
ADDRESSES: dict[ChannelName, str] = {
    "email": "zhang.sanfeng@example.com",
    "sms": "+8613812345678",
    "voice": "+8613812345678",
    "letter": f"{NAME}\n88 Hidden Garden Road\nShanghai 200000",
}


@dataclass
class Case:
    """One adapter at work: its channel, the same adapter with its far side down, and how
    to read what the far side received."""

    channel_name: ChannelName
    channel: Channel
    unreachable: Channel
    # The keys of everything the far side received, in order (a copy for each hand-over).
    received: Callable[[], Awaitable[list[str]]]
    key: Callable[[str], str]
    status: DeliveryStatus
    dedupes: bool
    # A send the far side refuses for good, where it can refuse one.
    refused: Callable[[], Awaitable[Delivery]] | None = None

    def message(self, command_id: str) -> OutgoingMessage:
        return OutgoingMessage(
            command_id=command_id,
            loan_id="L-4711",
            channel=self.channel_name,
            recipient="debtor",
            language="en",
            template="warning-reminder",
            address=ADDRESSES[self.channel_name],
            subject=SUBJECT,
            body=BODY,
            name=NAME,
            dated=date(2026, 11, 23),
        )


def _personal_data_in(case: Case, *texts: str) -> list[str]:
    """The personal data of a case's message found in ``texts`` (none, if all is well):
    each line of the address, a number without its country code, the text, the name."""
    message = case.message("any")
    secrets = [*message.address.splitlines(), message.address.lstrip("+")[2:]]
    secrets += [message.subject, message.body, NAME]
    return [s for s in secrets for text in texts if s in text]


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    # mail.log is the SMTP sink's own server log: the relay's side, not ours.
    return "\n".join(
        f"{r.getMessage()} {vars(r)}" for r in caplog.records if not r.name.startswith("mail.log")
    )


async def _keys(engine: AsyncEngine, column: ColumnElement[Any]) -> list[str]:
    async with engine.connect() as conn:
        return [str(k) for k in (await conn.scalars(select(column).order_by(column))).all()]


def _down_engine(schema: str) -> AsyncEngine:
    return make_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{unused_port()}/gone", schema=schema
    )


CASES = ["email", "sms", "voice", "letter", "recorded sms", "recorded voice"]
# The capabilities the port leaves optional, and who has them: the provider and the
# recorder are asked about an attempt in doubt (a relay and the print queue cannot be, so
# such an attempt stays in doubt); only the recorder takes a batch; the recorder refuses
# nothing.
LOOKUP = ["sms", "voice", "recorded sms", "recorded voice"]
BATCH = ["recorded sms", "recorded voice"]
REFUSING = ["email", "sms", "voice", "letter"]


@pytest.fixture(params=CASES)
async def case(
    request: pytest.FixtureRequest,
    smtp_sink: SmtpSink,
    provider_double: ProviderDouble,
    database_url: str,
) -> AsyncIterator[Case]:
    kind: str = request.param
    settings = NotifierSettings(database_url=database_url)
    clock = FixedClock(NOW)
    ring = settings.key_ring()
    if kind == "email":
        refusing = SmtpSink(refuse="550 5.1.1 <{address}> no such mailbox").start()

        def smtp(port: int) -> SmtpChannel:
            return SmtpChannel(host="127.0.0.1", port=port, sender=SENDER, timeout_s=2)

        async def message_ids() -> list[str]:
            return smtp_sink.message_ids

        async def refused() -> Delivery:
            return await smtp(refusing.port).send(email.message("C-refused"))

        email = Case(
            "email",
            smtp(smtp_sink.port),
            smtp(unused_port()),
            message_ids,
            lambda command_id: f"<{command_id}@lender.example>",
            "sent",
            dedupes=False,
            refused=refused,
        )
        try:
            yield email
        finally:
            refusing.stop()
    elif kind in ("sms", "voice"):
        async with (
            httpx.AsyncClient(base_url=provider_double.base_url, timeout=2) as client,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{unused_port()}", timeout=2
            ) as down_client,
        ):
            provider = HttpProviderChannel(client, max_tries=2, backoff_s=0)

            async def sent_keys() -> list[str]:
                return provider_double.sent_keys()

            async def refused() -> Delivery:
                provider_double.script(["fail:400"])
                return await provider.send(phone.message("C-refused"))

            phone = Case(
                kind,  # type: ignore[arg-type]
                provider,
                HttpProviderChannel(down_client, max_tries=2, backoff_s=0),
                sent_keys,
                str,
                "delivered" if kind == "sms" else "answered",
                dedupes=True,
                refused=refused,
            )
            yield phone
    else:
        await migrate(bootstrap.MIGRATIONS, database_url, settings.db_schema)
        engine = make_engine(database_url, schema=settings.db_schema)
        down = _down_engine(settings.db_schema)
        try:
            if kind == "letter":

                def printer(on: AsyncEngine) -> PrintChannel:
                    return PrintChannel(on, clock, sender=settings.letter_sender, ring=ring)

                async def printed() -> list[str]:
                    return await _keys(engine, letters.c.command_id)

                async def undated() -> Delivery:
                    return await printer(engine).send(
                        replace(letter.message("C-refused"), dated=None)
                    )

                letter = Case(
                    "letter",
                    printer(engine),
                    printer(down),
                    printed,
                    str,
                    "sent",
                    dedupes=True,
                    refused=undated,
                )
                yield letter
            else:

                async def recorded() -> list[str]:
                    return await _keys(engine, recorded_sends.c.command_id)

                channel_name: ChannelName = "sms" if kind == "recorded sms" else "voice"
                yield Case(
                    channel_name,
                    RecordingChannel(engine, clock, ring),
                    RecordingChannel(down, clock, ring),
                    recorded,
                    str,
                    "sent" if channel_name == "sms" else "unanswered",
                    dedupes=True,
                )
        finally:
            await engine.dispose()
            await down.dispose()


async def test_a_send_reaches_the_far_side_once_under_its_key(case: Case) -> None:
    delivery = await case.channel.send(case.message("C1"))
    assert delivery.status == case.status
    # The provider's reference is stored and logged: it may not carry personal data.
    assert _personal_data_in(case, str(delivery.provider_ref)) == []
    assert await case.received() == [case.key("C1")]


async def test_a_repeated_send_is_kept_once_or_carries_the_same_key(case: Case) -> None:
    first = await case.channel.send(case.message("C1"))
    again = await case.channel.send(case.message("C1"))
    assert again.status == first.status
    copies = 1 if case.dedupes else 2
    assert await case.received() == [case.key("C1")] * copies


async def test_an_unreachable_far_side_is_a_transient_error_with_nothing_handed_over(
    case: Case,
) -> None:
    with pytest.raises(SendError) as error:
        await case.unreachable.send(case.message("C1"))
    assert not error.value.permanent
    assert not error.value.outcome_unknown
    assert _personal_data_in(case, error.value.code, str(error.value)) == []
    assert await case.received() == []


@pytest.mark.parametrize("case", REFUSING, indirect=True)
async def test_a_refusal_is_permanent_and_names_personal_data_in(case: Case) -> None:
    assert case.refused is not None
    with pytest.raises(SendError) as error:
        await case.refused()
    assert error.value.permanent
    assert _personal_data_in(case, error.value.code, str(error.value)) == []
    assert await case.received() == []


async def test_no_log_line_carries_personal_data(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await case.channel.send(case.message("C1"))
    with pytest.raises(SendError):
        await case.unreachable.send(case.message("C2"))
    if isinstance(case.channel, LookupChannel):
        await case.channel.lookup("C1", case.channel_name)
    assert caplog.records
    assert _personal_data_in(case, _logged(caplog)) == []


def test_the_channels_that_can_look_up_batch_or_refuse_are_the_expected_ones(
    case: Case, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["case"]
    assert isinstance(case.channel, LookupChannel) == (name in LOOKUP)
    assert isinstance(case.channel, BatchChannel) == (name in BATCH)
    assert (case.refused is not None) == (name in REFUSING)


@pytest.mark.parametrize("case", LOOKUP, indirect=True)
async def test_a_lookup_tells_a_key_it_has_from_one_it_has_not_and_sends_nothing(
    case: Case,
) -> None:
    channel = case.channel
    assert isinstance(channel, LookupChannel)
    assert await channel.lookup("C1", case.channel_name) == NotFound()
    delivery = await channel.send(case.message("C1"))
    found = await channel.lookup("C1", case.channel_name)
    assert found == Found(delivery.status, delivery.provider_ref)
    assert await case.received() == [case.key("C1")]


@pytest.mark.parametrize("case", LOOKUP, indirect=True)
async def test_a_lookup_at_an_unreachable_far_side_is_a_transient_error(case: Case) -> None:
    channel = case.unreachable
    assert isinstance(channel, LookupChannel)
    with pytest.raises(SendError) as error:
        await channel.lookup("C1", case.channel_name)
    assert not error.value.permanent


@pytest.mark.parametrize("case", BATCH, indirect=True)
async def test_a_batch_has_one_outcome_per_message_as_send_would(case: Case) -> None:
    channel, down = case.channel, case.unreachable
    assert isinstance(channel, BatchChannel)
    assert isinstance(down, BatchChannel)
    outcomes = await channel.send_many([case.message("C1"), case.message("C2")])
    assert outcomes == [Delivery(case.status), Delivery(case.status)]
    assert await case.received() == [case.key("C1"), case.key("C2")]
    failed = await down.send_many([case.message("C3"), case.message("C4")])
    assert [type(o) for o in failed] == [SendError, SendError]
    assert [o.permanent for o in failed if isinstance(o, SendError)] == [False, False]
