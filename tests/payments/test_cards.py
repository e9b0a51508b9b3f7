"""Card rules of PROTOCOL §4.1: Luhn, brands by prefix, YYMM expiry (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay.payments.cards import CardInvalid, brand_of, check_card, is_expired, luhn_ok


def with_luhn(body: str) -> str:
    for digit in "0123456789":
        if luhn_ok(body + digit):
            return body + digit
    raise AssertionError


@pytest.mark.parametrize(
    ("prefix", "brand"),
    [
        ("4", "visa"),
        ("51", "mastercard"),
        ("55", "mastercard"),
        ("2221", "mastercard"),
        ("2720", "mastercard"),
        ("34", "amex"),
        ("37", "amex"),
        ("6011", "discover"),
        ("644", "discover"),
        ("649", "discover"),
        ("65", "discover"),
        ("3528", "jcb"),
        ("3589", "jcb"),
        ("300", "diners"),
        ("305", "diners"),
        ("36", "diners"),
        ("38", "diners"),
        ("39", "diners"),
        ("62", "unionpay"),
    ],
)
def test_brands_by_prefix(prefix: str, brand: str) -> None:
    assert brand_of(prefix + "0" * (15 - len(prefix))) == brand


@pytest.mark.parametrize(
    "prefix", ["50", "56", "2220", "2721", "35", "3527", "3590", "306", "6010", "643", "1", "9"]
)
def test_prefixes_without_a_brand(prefix: str) -> None:
    assert brand_of(prefix + "0" * (15 - len(prefix))) is None


@pytest.mark.parametrize(
    "pan", ["4242424242424242", "378282246310005", "6011111111111117", "5555555555554444"]
)
def test_known_numbers_pass_luhn(pan: str) -> None:
    assert luhn_ok(pan)
    assert check_card(pan=pan, expiry="3012", track2=None, cardholder_name=None).last4 == pan[-4:]


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_exactly_one_check_digit_completes_a_number(body: str) -> None:
    assert sum(luhn_ok(body + d) for d in "0123456789") == 1


@pytest.mark.parametrize(
    ("pan", "expiry"),
    [
        ("4242424242424241", "3012"),  # Luhn
        (with_luhn("4242424242"), "3012"),  # 11 digits
        ("9" * 15 + "5", "3012"),
        ("4242 4242 4242 4242", "3012"),
        ("4242424242424242", "3000"),
        ("4242424242424242", "3013"),
        ("4242424242424242", "301"),
        ("4242424242424242", "12-30"),
        (with_luhn("4" * 19), "3012"),  # 20 digits
    ],
)
def test_invalid_cards(pan: Any, expiry: str) -> None:
    with pytest.raises(CardInvalid) as caught:
        check_card(pan=pan, expiry=expiry, track2=None, cardholder_name=None)
    assert pan not in str(caught.value)


@pytest.mark.parametrize("length", [12, 19])
def test_twelve_to_nineteen_digits(length: int) -> None:
    pan = with_luhn("4" * (length - 1))
    assert check_card(pan=pan, expiry="3012", track2=None, cardholder_name=None).brand == "visa"


def test_the_card_repr_hides_the_number() -> None:
    card = check_card(
        pan="4242424242424242", expiry="3012", track2="4242424242424242=3012", cardholder_name="A B"
    )
    assert "4242424242424242" not in repr(card) and "A B" not in repr(card)
    assert (card.bin, card.last4, card.brand) == ("424242", "4242", "visa")


def test_expiry_is_the_end_of_the_month() -> None:
    assert not is_expired("2512", now=datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    assert is_expired("2512", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert is_expired("2411", now=datetime(2025, 1, 1, tzinfo=UTC))
