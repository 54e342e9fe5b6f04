"""Money travels as a decimal string, never as a float.

JSON numbers become binary floats in most consumers (and in Python's ``json`` by default),
so an amount like 0.10 would not survive a hop. On the wire an amount is a string such as
``"1234.50"``; in code it is ``Decimal``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, StringConstraints, WithJsonSchema

AMOUNT_PATTERN = r"^-?\d{1,15}(\.\d{1,6})?$"
_AMOUNT_RE = re.compile(AMOUNT_PATTERN)


def _parse_amount(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("amount must be finite")
        return value
    if isinstance(value, bool | float):
        raise ValueError("amounts are decimal strings, never floats")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str) and _AMOUNT_RE.match(value):
        try:
            return Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - the pattern already guards this
            raise ValueError("not a decimal amount") from exc
    raise ValueError("amount must be a decimal string such as '1234.50'")


Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN, "examples": ["1234.50"]}),
]

# ISO 4217 alphabetic code.
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
