"""ISO 4217 minor units, stdlib only: the wire (collections_kit.money) and the texts a
borrower reads (the notifier's templates) write an amount at its currency's scale.
"""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 minor units where they are not 2; None: the code has no minor unit (gold, SDR...).
_MINOR_UNITS: dict[str, int | None] = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
    **dict.fromkeys(
        ("XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"),
        None,
    ),
}


def minor_units(currency: str) -> int | None:
    """The ISO 4217 minor unit of ``currency``: CNY 2, JPY 0, KWD 3."""
    return _MINOR_UNITS.get(currency, 2)


def in_minor_units(amount: Decimal, currency: str | None) -> Decimal:
    """``amount`` at its currency's scale (500.000000 CNY -> 500.00), never rounded: an
    amount finer than the minor unit keeps its digits (0.125 CNY stays 0.125)."""
    units = minor_units(currency) if currency else None
    exponent = amount.normalize().as_tuple().exponent
    places = max(0, -exponent) if isinstance(exponent, int) else 0
    scale = places if units is None or places > units else units
    return amount.quantize(Decimal(1).scaleb(-scale))
