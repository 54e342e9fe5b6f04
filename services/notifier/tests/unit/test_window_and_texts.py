"""Window arithmetic at its edges, message texts, masking, and the REST input's validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from notifier.domain import templates
from notifier.domain.masking import mask_email, mask_phone, mask_text
from notifier.domain.model import Language
from notifier.domain.policy import ContactWindow
from notifier.domain.window import first_instant_at, next_allowed
from notifier.entrypoints.api import ContactDetailsIn

NEW_YORK = ZoneInfo("America/New_York")


def test_a_wall_time_inside_the_spring_gap_maps_to_the_transition() -> None:
    # 2026-03-08 02:30 never shows on New York clocks: they jump from 02:00 EST to 03:00 EDT.
    assert first_instant_at(date(2026, 3, 8), time(2, 30), NEW_YORK) == datetime(
        2026, 3, 8, 7, 0, tzinfo=UTC
    )


def test_a_repeated_wall_time_in_the_autumn_maps_to_its_first_occurrence() -> None:
    # 01:30 shows twice on 2026-11-01: first in EDT (05:30 UTC), then in EST.
    assert first_instant_at(date(2026, 11, 1), time(1, 30), NEW_YORK) == datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )


def test_a_window_start_inside_a_gap_opens_at_the_transition() -> None:
    window = ContactWindow(time(2, 30), time(21, 0))
    at = datetime(2026, 3, 8, 1, 0, tzinfo=NEW_YORK)
    assert next_allowed(at, NEW_YORK, window) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_a_day_skipped_by_the_zone_is_skipped_by_the_window() -> None:
    # Samoa skipped 2011-12-30 entirely when it moved across the date line.
    apia = ZoneInfo("Pacific/Apia")
    window = ContactWindow(time(8, 0), time(21, 0))
    at = datetime(2011, 12, 29, 22, 0, tzinfo=apia)
    assert next_allowed(at, apia, window) == datetime(2011, 12, 31, 8, 0, tzinfo=apia)


def test_windows_must_be_within_one_day() -> None:
    with pytest.raises(ValueError, match="start before it ends"):
        ContactWindow(time(22, 0), time(8, 0))


@pytest.mark.parametrize("language", ["en", "zh-CN"])
@pytest.mark.parametrize("name", ["warning-reminder", "formal-notice", "guarantor-notice"])
def test_every_template_names_the_amount_and_currency(language: str, name: str) -> None:
    text = templates.render(
        name,
        language,  # type: ignore[arg-type]
        channel="email",
        loan_id="L1",
        amount=Decimal("12345.5"),
        currency="CNY",
        opt_out_url="https://lender.example/stop",
        name="Li",
    )
    assert "12,345.50 CNY" in text.body
    assert "https://lender.example/stop" in text.body  # the opt-out line


def test_letters_carry_no_electronic_opt_out_line_but_say_where_to_choose_channels() -> None:
    text = templates.render(
        "formal-notice",
        "en",
        channel="letter",
        loan_id="L1",
        amount=Decimal("1"),
        currency="USD",
        opt_out_url="https://x/stop",
    )
    assert "STOP" not in text.body
    assert "To choose how we contact you, call us or visit https://x/stop." in text.body


@pytest.mark.parametrize("language", ["en", "zh-CN"])
@pytest.mark.parametrize("channel", ["email", "sms", "voice"])
@pytest.mark.parametrize(
    "name", ["warning-reminder", "formal-notice", "guarantor-notice", "validation-notice"]
)
def test_every_electronic_message_and_call_carries_its_opt_out(
    language: str, channel: str, name: str
) -> None:
    text = templates.render(
        name,
        language,  # type: ignore[arg-type]
        channel=channel,  # type: ignore[arg-type]
        loan_id="L1",
        amount=Decimal("10"),
        currency="USD",
        opt_out_url="https://x/stop",
    )
    line = templates.opt_out_line(language, channel, "https://x/stop")  # type: ignore[arg-type]
    assert line in text.body
    assert "https://x/stop" in line
    if channel != "voice":
        assert "STOP" in line


def test_a_template_without_its_opt_out_line_is_refused_at_load() -> None:
    broken = templates.Template("debtor", "s", "body without it", "{opt_out}", "{opt_out}")
    templates._TEMPLATES[("broken", "en")] = broken
    try:
        with pytest.raises(ValueError, match="without its opt-out line"):
            templates._check()
    finally:
        del templates._TEMPLATES[("broken", "en")]


def test_sms_and_calls_use_their_short_forms() -> None:
    sms = templates.render(
        "warning-reminder",
        "en",
        channel="sms",
        loan_id="L1",
        amount=Decimal("10"),
        currency="USD",
        opt_out_url="u",
    )
    call = templates.render(
        "warning-reminder",
        "en",
        channel="voice",
        loan_id="L1",
        amount=Decimal("10"),
        currency="USD",
        opt_out_url="u",
    )
    mail = templates.render(
        "warning-reminder",
        "en",
        channel="email",
        loan_id="L1",
        amount=Decimal("10"),
        currency="USD",
        opt_out_url="u",
    )
    assert len(sms.body) < 200 < len(mail.body)
    assert call.body.startswith("Hello, this is a reminder")


def test_the_validation_notice_states_amount_collector_and_dispute_date() -> None:
    text = templates.render(
        "validation-notice",
        "en",
        channel="letter",
        loan_id="L9",
        amount=Decimal("1234.5"),
        currency="USD",
        opt_out_url="u",
        dispute_by=date(2026, 12, 28),
        collector="Acme Lending",
    )
    assert "Acme Lending is a debt collector" in text.body
    assert "1,234.50 USD" in text.body
    assert "by 2026-12-28" in text.body


def test_masking_keeps_enough_to_recognise_and_no_more() -> None:
    assert mask_email("zhang.san@example.com") == "z***@example.com"
    assert mask_phone("+8613812341234") == "+86*******1234"
    assert mask_text("北京市朝阳区某路 1 号") == "北京市***"
    assert mask_text("李四", keep=1) == "李***"


def test_contact_details_input_is_validated() -> None:
    ok = ContactDetailsIn.model_validate(
        {"language": "en", "email": "a@b.co", "phone": "+14155550123"}
    )
    assert ok.phone == "+14155550123"
    for bad in (
        {"language": "fr"},
        {"language": "en", "email": "not-an-address"},
        {"language": "en", "email": "a@b.co\r\nBcc: x@y.z"},
        {"language": "en", "phone": "13812341234"},
        {"language": "en", "phone": "+0123"},
        {"language": "en", "guarantor": {"phone": "+14155550123"}},
        {"language": "en", "fax": "+14155550123"},
    ):
        with pytest.raises(ValidationError):
            ContactDetailsIn.model_validate(bad)


@pytest.mark.parametrize(
    ("language", "amount", "currency", "shown"),
    [
        ("en", "1234.500000", "CNY", "1,234.50 CNY"),
        ("zh-CN", "1234.500000", "CNY", "1,234.50 CNY"),
        ("en", "150000.000000", "JPY", "150,000 JPY"),
        ("en", "12.345000", "KWD", "12.345 KWD"),
        ("en", "0.125000", "USD", "0.125 USD"),
        ("en", "7.000000", "GBP", "7.00 GBP"),
    ],
)
def test_amounts_are_written_in_the_currencys_minor_unit_and_the_borrowers_locale(
    language: Language, amount: str, currency: str, shown: str
) -> None:
    """Stored as NUMERIC(20, 6), an amount is written in its currency's ISO 4217 minor unit
    (JPY none, KWD three), never rounded away, grouped as the borrower's language does."""
    for channel in ("email", "sms", "voice", "letter"):
        text = templates.render(
            "warning-reminder",
            language,
            channel=channel,
            loan_id="L-1",
            amount=Decimal(amount),
            currency=currency,
            opt_out_url="https://x.example/opt-out",
        )
        assert shown in text.body, (channel, text.body)
