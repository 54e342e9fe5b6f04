"""Amounts on the wire in the currency's minor unit (ISO 4217), however they are stored."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from collections_kit import contract as c
from collections_kit.currencies import minor_units
from collections_kit.money import Amount, InCurrency, wire_amount

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("currency", "units"),
    [
        ("CNY", 2),
        ("USD", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("CLF", 4),
        ("XAU", None),
    ],
)
def test_minor_units_follow_iso_4217(currency: str, units: int | None) -> None:
    assert minor_units(currency) == units


@pytest.mark.parametrize(
    ("amount", "currency", "wire"),
    [
        ("500.000000", "CNY", "500.00"),
        ("1234.5", "CNY", "1234.50"),
        ("500.000000", "JPY", "500"),
        ("1.5", "KWD", "1.500"),
        ("0.000000", "CNY", "0.00"),
        ("-10.000000", "USD", "-10.00"),
        # Never rounded: a finer amount keeps its digits (it is what the books hold).
        ("0.125000", "CNY", "0.125"),
        ("500.500000", "JPY", "500.5"),
        ("7.250000", "XAU", "7.25"),
        ("1E+2", "CNY", "100.00"),
    ],
)
def test_an_amount_is_written_in_its_currencys_minor_unit(
    amount: str, currency: str, wire: str
) -> None:
    assert wire_amount(Decimal(amount), currency) == wire


def test_messages_and_views_carrying_a_currency_write_their_amounts_in_it() -> None:
    """'500.000000' came back on REST and Kafka (NUMERIC(20, 6)) while the README shows
    '1234.50'."""
    data = c.RepaymentReceived(
        repayment_id="R1",
        loan_id="L1",
        currency="JPY",
        amount=Decimal("500.000000"),
        outstanding_balance_after=Decimal("1500.000000"),
        received_at=NOW,
    )
    assert '"amount":"500"' in data.model_dump_json()
    assert data.model_dump(mode="json")["outstanding_balance_after"] == "1500"

    class Line(BaseModel):
        amount: Amount

    class View(InCurrency):
        currency: str
        total: Amount
        lines: list[Line]

    view = View(currency="CNY", total=Decimal("12.000000"), lines=[Line(amount=Decimal("3"))])
    assert view.model_dump(mode="json") == {
        "currency": "CNY",
        "total": "12.00",
        "lines": [{"amount": "3.00"}],
    }
    # The shape is documented as it is: the serializer changes only how amounts are written.
    assert View.model_json_schema(mode="serialization") == View.model_json_schema()
    # Outside a model that names a currency, an amount is written as it is.
    assert Line(amount=Decimal("3.000000")).model_dump(mode="json") == {"amount": "3.000000"}


def test_a_model_without_a_currency_writes_its_amounts_in_its_parents() -> None:
    """Such a model has no wrap of its own (it cost most of a message's serialisation): a
    parent with a currency still sets it; alone, its amounts are written as they are."""

    class Instalment(InCurrency):
        amount: Amount

    class Plan(InCurrency):
        currency: str
        instalments: list[Instalment]

    class PricedInstalment(Instalment):
        currency: str

    plan = Plan(currency="JPY", instalments=[Instalment(amount=Decimal("7.000000"))])
    assert plan.model_dump_json() == '{"currency":"JPY","instalments":[{"amount":"7"}]}'
    assert Instalment(amount=Decimal("7.000000")).model_dump_json() == '{"amount":"7.000000"}'
    # A subclass that adds a currency gets the wrap back.
    priced = PricedInstalment(amount=Decimal("7.000000"), currency="GBP")
    assert priced.model_dump(mode="json") == {"amount": "7.00", "currency": "GBP"}
