"""Money as people read and type it: minor units (PROTOCOL §0) to and from major units.

One place for a currency's decimals (ISO 4217 minor unit), used by the CSV export, the portal
and the CLI alike.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_ZERO_DECIMALS = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
)
_THREE_DECIMALS = frozenset("BHD IQD JOD KWD LYD OMR TND".split())
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "INR": "₹"}
_TYPED = re.compile(r"^\d{1,3}(,\d{3})+(\.\d*)?$|^\d*(\.\d*)?$")


class AmountInvalid(ValueError):
    """What a person typed is not an amount of that currency (the message says why, plainly)."""


def exponent(currency: str) -> int:
    """The currency's decimals: 2 for USD, 0 for JPY, 3 for KWD."""
    return 0 if currency in _ZERO_DECIMALS else 3 if currency in _THREE_DECIMALS else 2


def major(amount: int, currency: str) -> str:
    """Minor units in major units, no symbol or grouping: ``1250, "USD"`` → ``12.50``."""
    digits = exponent(currency)
    whole, minor = divmod(abs(amount), 10**digits)
    sign = "-" if amount < 0 else ""
    return f"{sign}{whole}" + (f".{minor:0{digits}d}" if digits else "")


def money(amount: int | None, currency: str) -> str:
    """Minor units as a merchant reads them: ``1250, "USD"`` → ``$12.50``."""
    if amount is None:
        return "—"
    digits = exponent(currency)
    whole, minor = divmod(abs(amount), 10**digits)
    text = f"{whole:,}" + (f".{minor:0{digits}d}" if digits else "")
    sign = "-" if amount < 0 else ""
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def symbol(currency: str) -> str:
    return _SYMBOLS.get(currency, currency)


def to_minor(typed: str, currency: str) -> int:
    """What a person typed (``12.5``, ``$1,200.00``, ``1200``) in minor units; AmountInvalid
    with a plain message otherwise."""
    text = typed.strip().replace(" ", "")
    sym = _SYMBOLS.get(currency)
    if sym and text.startswith(sym):
        text = text[len(sym) :]
    if text.upper().endswith(currency):
        text = text[: -len(currency)]
    if not text or not _TYPED.match(text) or text == ".":
        raise AmountInvalid("Enter an amount as a number, for example 12.50.")
    digits = exponent(currency)
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise AmountInvalid("Enter an amount as a number, for example 12.50.") from None
    scaled = value.scaleb(digits)
    if scaled != scaled.to_integral_value():
        raise AmountInvalid(
            f"{currency} amounts have no decimals."
            if digits == 0
            else f"Use at most {digits} decimals for {currency}."
        )
    return int(scaled)
