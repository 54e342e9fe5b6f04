"""Money travels as a decimal string, never as a float.

JSON numbers become binary floats in most consumers (and in Python's ``json`` by default),
so an amount like 0.10 would not survive a hop. On the wire an amount is a string such as
``"1234.50"``; in code it is ``Decimal``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StringConstraints,
    WithJsonSchema,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from collections_kit.currencies import in_minor_units

# At most 14 digits before the point and 6 after: what every amount column holds
# (NUMERIC(20, 6)). A larger amount is refused here, as invalid input on its way in, rather
# than by the database in a consumer's transaction, where it failed the whole poll, was
# retried record by record and only then dead-lettered as a handler failure.
AMOUNT_PATTERN = r"^-?\d{1,14}(\.\d{1,6})?$"
NON_NEGATIVE_AMOUNT_PATTERN = r"^\d{1,14}(\.\d{1,6})?$"
_AMOUNT_RE = re.compile(AMOUNT_PATTERN)
_AMOUNT_LIMIT = Decimal(10) ** 14


def _parse_amount(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("amount must be finite")
        return _within_limit(value)
    if isinstance(value, bool | float):
        raise ValueError("amounts are decimal strings, never floats")
    if isinstance(value, int):
        return _within_limit(Decimal(value))
    if isinstance(value, str) and _AMOUNT_RE.match(value):
        try:
            return Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - the pattern already guards this
            raise ValueError("not a decimal amount") from exc
    raise ValueError("amount must be a decimal string such as '1234.50'")


def _within_limit(value: Decimal) -> Decimal:
    if abs(value) >= _AMOUNT_LIMIT:
        raise ValueError("amount must have at most 14 digits before the decimal point")
    return value


def wire_amount(amount: Decimal, currency: str | None) -> str:
    return format(in_minor_units(amount, currency), "f")


# The currency of the model being written, for the amounts inside it (see InCurrency).
_CURRENCY: ContextVar[str | None] = ContextVar("amount_currency", default=None)


def _write_amount(amount: Decimal) -> str:
    currency = _CURRENCY.get()
    # Outside a model that names its currency an amount is written exactly as it is.
    return wire_amount(amount, currency) if currency else format(amount, "f")


@contextmanager
def amounts_in(currency: str | None) -> Iterator[None]:
    token = _CURRENCY.set(currency)
    try:
        yield
    finally:
        _CURRENCY.reset(token)


class InCurrency(BaseModel):
    """A model with a ``currency`` writes every amount in it, nested ones included, in that
    currency's minor unit: stored as NUMERIC(20, 6), 500 CNY would read "500.000000" on
    REST and Kafka, where the README (and a client) expect "500.00"."""

    @model_serializer(mode="wrap")
    def _amounts_in_currency(self, handler: SerializerFunctionWrapHandler) -> Any:
        currency = getattr(self, "currency", None)
        if not isinstance(currency, str):
            return handler(self)
        with amounts_in(currency):
            return handler(self)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source)
        if "currency" not in cls.__pydantic_fields__ and schema.get("type") == "model":
            # Without a currency of its own the wrap only calls its handler, yet running it
            # (pydantic-core calling back into Python, then serialising the dict it gets)
            # was three quarters of a message's model_dump_json. A model nested in one with
            # a currency still writes its amounts in it: the outer model's wrap sets it.
            return cast(CoreSchema, {k: v for k, v in schema.items() if k != "serialization"})
        return schema

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The serializer only changes how amounts are written, not the shape: document the
        # model as if it had none (its JSON Schema would otherwise be empty, "any").
        plain = {k: v for k, v in core_schema.items() if k != "serialization"}
        return handler(cast(CoreSchema, plain))


Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    PlainSerializer(_write_amount, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN, "examples": ["1234.50"]}),
]


def _not_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("amount must not be negative")
    return value


# What is owed, overdue, due, repaid or confirmed is never below zero: a negative one is
# invalid input (a dead letter on Kafka, 422 on REST), not a case with outstanding -5000.
# Only amounts signed by their effect stay ``Amount``: a ledger posting (a repayment is
# negative) and a ledger balance that can be overpaid.
NonNegativeAmount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    AfterValidator(_not_negative),
    PlainSerializer(_write_amount, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": NON_NEGATIVE_AMOUNT_PATTERN, "examples": ["1234.50"]}
    ),
]

# ISO 4217 alphabetic code.
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
