"""The SMS/voice adapter against the real HTTP provider double on loopback: retries,
idempotency keys, final refusals, and no number or text in any log line."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from notifier.adapters.provider_http import HttpProviderChannel
from notifier.app.ports import Delivery, OutgoingMessage, SendError
from tests.provider_double import ProviderDouble

NUMBER = "+8613812341234"


@pytest.fixture
async def channel(provider_double: ProviderDouble) -> AsyncIterator[HttpProviderChannel]:
    async with httpx.AsyncClient(base_url=provider_double.base_url, timeout=2) as client:
        yield HttpProviderChannel(client, max_tries=3, backoff_s=0.01, rng=random.Random(7))


def message(command_id: str, channel: str = "sms") -> OutgoingMessage:
    return OutgoingMessage(
        command_id=command_id,
        loan_id="L1",
        channel=channel,  # type: ignore[arg-type]
        recipient="debtor",
        language="en",
        template="warning-reminder",
        address=NUMBER,
        subject="s",
        body="secret text about the debt",
    )


async def test_a_text_is_delivered_and_a_call_reports_whether_it_was_answered(
    channel: HttpProviderChannel, provider_double: ProviderDouble
) -> None:
    assert (await channel.send(message("C1"))).status == "delivered"
    provider_double.script(["unanswered"])
    call = await channel.send(message("C2", "voice"))
    assert call.status == "unanswered"
    assert call.provider_ref
    assert (await channel.send(message("C3", "voice"))).status == "answered"
    assert [s.kind for key in ("C1", "C2", "C3") for s in provider_double.sends[key]] == [
        "sms",
        "voice",
        "voice",
    ]


async def test_transient_failures_are_retried_with_the_same_key_and_send_once(
    channel: HttpProviderChannel, provider_double: ProviderDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider_double.script(["fail:503", "fail:429"])
    assert await channel.send(message("C1")) == Delivery("delivered", "msg_000001")
    # The answer is lost after the provider sent: the retry gets the first answer back.
    provider_double.script(["lost:502"])
    assert (await channel.send(message("C2"))).status == "delivered"
    # A whole retry of the command later (the dispatcher's, or another replica's): replayed.
    assert (await channel.send(message("C2"))).status == "delivered"
    assert provider_double.doubled() == {}
    assert provider_double.sent_keys() == ["C1", "C2"]
    assert [(k, replayed) for k, _, replayed in provider_double.requests] == [
        ("C1", False),
        ("C1", False),
        ("C1", False),
        ("C2", False),
        ("C2", True),
        ("C2", True),
    ]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert NUMBER not in logged
    assert NUMBER[3:] not in logged
    assert "secret text" not in logged


async def test_a_refusal_is_final_and_exhausted_retries_are_not(
    channel: HttpProviderChannel, provider_double: ProviderDouble
) -> None:
    provider_double.script(["fail:400"])
    with pytest.raises(SendError) as refused:
        await channel.send(message("C1"))
    assert refused.value.code == "provider_400"
    assert refused.value.permanent
    provider_double.script(["fail:503"] * 3)
    with pytest.raises(SendError) as unavailable:
        await channel.send(message("C2"))
    assert unavailable.value.code == "provider_503"
    assert not unavailable.value.permanent
    assert provider_double.sent_keys() == []
    # Next time it works, and only then is it sent.
    assert (await channel.send(message("C2"))).status == "delivered"
    assert provider_double.sent_keys() == ["C2"]


async def test_an_unreachable_provider_is_a_transient_error() -> None:
    async with httpx.AsyncClient(base_url="http://127.0.0.1:9", timeout=0.5) as client:
        channel = HttpProviderChannel(client, max_tries=2, backoff_s=0)
        with pytest.raises(SendError) as error:
            await channel.send(message("C1"))
    assert error.value.code.startswith("provider_unreachable:")
    assert not error.value.permanent
