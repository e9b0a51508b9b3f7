"""Card numbers (PROTOCOL §4.1): Luhn, brands by prefix, YYMM expiry, and the masked summary.

Nothing here logs or echoes a card number: errors name the member, never its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

PAN_RE = re.compile(r"[0-9]{12,19}")
EXPIRY_RE = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])")

# (brand, first prefix, last prefix): a PAN belongs to a range when the same number of its
# leading digits falls between the two, inclusive (§4.1).
BRAND_RANGES: tuple[tuple[str, str, str], ...] = (
    ("visa", "4", "4"),
    ("mastercard", "51", "55"),
    ("mastercard", "2221", "2720"),
    ("amex", "34", "34"),
    ("amex", "37", "37"),
    ("discover", "6011", "6011"),
    ("discover", "644", "649"),
    ("discover", "65", "65"),
    ("jcb", "3528", "3589"),
    ("diners", "300", "305"),
    ("diners", "36", "36"),
    ("diners", "38", "39"),
    ("unionpay", "62", "62"),
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def brand_of(pan: str) -> str | None:
    for brand, low, high in BRAND_RANGES:
        prefix = pan[: len(low)]
        if len(prefix) == len(low) and low <= prefix <= high:
            return brand
    return None


def expiry_ok(expiry: str) -> bool:
    """``YYMM`` with a month 01-12."""
    return EXPIRY_RE.fullmatch(expiry) is not None


def is_expired(expiry: str, *, now: datetime) -> bool:
    """Past its expiry month (a card is good through the last day of ``YYMM``)."""
    year, month = 2000 + int(expiry[:2]), int(expiry[2:])
    return (now.year, now.month) > (year, month)


@dataclass(frozen=True)
class CardData:
    """The decrypted card envelope. Only :meth:`summary` may leave the request."""

    pan: str = field(repr=False)
    expiry: str
    track2: str | None = field(default=None, repr=False)
    cardholder_name: str | None = field(default=None, repr=False)
    brand: str = ""

    def __repr__(self) -> str:
        return f"CardData(brand={self.brand!r}, last4={self.pan[-4:]!r})"

    @property
    def bin(self) -> str:
        return self.pan[:6]

    @property
    def last4(self) -> str:
        return self.pan[-4:]


class CardInvalid(Exception):
    """The card fails §4.1 (422 invalid_card); the message names no value."""


def check_card(
    *, pan: str, expiry: str, track2: str | None, cardholder_name: str | None
) -> CardData:
    """A card that may go to the processor: 12-19 digits, Luhn, a known brand, YYMM expiry."""
    if not PAN_RE.fullmatch(pan) or not luhn_ok(pan):
        raise CardInvalid("card number is invalid")
    brand = brand_of(pan)
    if brand is None:
        raise CardInvalid("card brand is not accepted")
    if not expiry_ok(expiry):
        raise CardInvalid("card expiry must be YYMM with a month 01-12")
    return CardData(
        pan=pan, expiry=expiry, track2=track2, cardholder_name=cardholder_name, brand=brand
    )
