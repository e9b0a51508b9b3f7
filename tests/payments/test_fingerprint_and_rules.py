"""Idempotency fingerprints (§4.5), charge body rules (§4.1) and the key set budget (§3.10),
without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from viopay.crypto.wrapping import MasterKeyWrapper
from viopay.errors import InvalidCard, InvalidRequest
from viopay.payments.channel import key_set_usage
from viopay.payments.idempotency import FINGERPRINT_PURPOSE, fingerprint
from viopay.payments.service import ChargeDraft, TerminalScope, build_draft, surcharge_cap
from viopay.payments.terminal_auth import AuthenticatedTerminal

KEY = MasterKeyWrapper(b"\x11" * 32).derive(FINGERPRINT_PURPOSE)
CARD = {"pan": "4242424242424242", "expiry": "3012"}
SCOPE = TerminalScope("TID-000001", "POS-00000001", "mer_1", "USD")
SURCHARGE_ON = {"enabled": True, "rate_bps": 300, "max_amount": 0}


def fp(
    plaintext: dict[str, Any],
    card: dict[str, Any] | None = None,
    method: str = "POST",
    path: str = "/pos/charge",
    key: bytes = KEY,
) -> str:
    return fingerprint(key, method=method, path=path, plaintext=plaintext, card=card)


def test_the_fingerprint_sees_the_card_not_its_envelope_nor_the_pin_block() -> None:
    a = fp({"amount": 1, "card": {"iv": "one"}, "pin_block": "AA" * 16}, CARD)
    b = fp(
        {"pin_block": "BB" * 16, "card": {"iv": "two"}, "amount": 1}, dict(reversed(CARD.items()))
    )
    assert a == b
    assert a != fp({"amount": 1, "card": {}}, {**CARD, "expiry": "3011"})
    assert a != fp({"amount": 2, "card": {}}, CARD)
    assert a != fp({"amount": 1, "card": {}}, CARD, path="/pos/charge/x/refund")
    assert a != fp(
        {"amount": 1, "card": {}},
        CARD,
        key=MasterKeyWrapper(b"\x22" * 32).derive(FINGERPRINT_PURPOSE),
    )
    assert CARD["pan"] not in a


def test_an_unrepresentable_plaintext_is_400() -> None:
    with pytest.raises(InvalidRequest):
        fp({"amount": 2**60})


def draft(
    plaintext: dict[str, Any],
    card: dict[str, Any] | None = CARD,
    rule: dict[str, Any] | None = None,
) -> ChargeDraft:
    return build_draft(
        scope=SCOPE,
        plaintext=plaintext,
        card=card,
        tpk=None,
        surcharge_rule=rule or SURCHARGE_ON,
        nonce="n" * 12,
        idempotency_key=None,
    )


def fields(plaintext: dict[str, Any], **kwargs: Any) -> set[str]:
    with pytest.raises(InvalidRequest) as caught:
        draft(plaintext, **kwargs)
    return {e["field"] for e in caught.value.extra["errors"]}


BASE = {"amount": 1000, "currency": "USD", "entry_mode": "chip"}


def test_members_are_strict() -> None:
    assert draft(BASE).body.tip_amount == 0 and draft(BASE).body.reference is None
    assert fields(BASE | {"amount": True}) == {"amount"}
    assert fields(BASE | {"amount": 10.0}) == {"amount"}
    assert fields(BASE | {"amount": 100_000_000}) == {"amount"}
    assert fields({"currency": "USD", "entry_mode": "chip"}) == {"amount"}
    assert fields(BASE | {"currency": "usd"}) == {"currency"}
    assert fields(BASE | {"emv": "ABC"}) == {"emv"}
    assert fields(BASE | {"pin_block": "G" * 32}) == {"pin_block"}
    assert fields(BASE, card={"pan": 4242424242424242, "expiry": "3012"}) == {"pan"}
    assert draft(BASE | {"unknown": 1, "metadata": {"table": 4}}).body.metadata == {"table": 4}


def test_the_parts_fit_in_the_amount() -> None:
    assert (
        draft(BASE | {"tip_amount": 400, "tax_amount": 300, "surcharge_amount": 0}).body.amount
        == 1000
    )
    assert fields(BASE | {"tip_amount": 700, "tax_amount": 301}) == {"amount"}


@pytest.mark.parametrize(
    ("amount", "surcharge", "tip", "rate", "cap"),
    [
        (1000, 0, 0, 300, 30),
        (1030, 30, 0, 300, 30),
        (1000, 20, 100, 250, 22),
        (980, 0, 0, 250, 25),
        (1000, 0, 0, 0, 0),
        (99_999_999, 0, 0, 10_000, 99_999_999),
    ],
)
def test_surcharge_cap_rounds_half_up(
    amount: int, surcharge: int, tip: int, rate: int, cap: int
) -> None:
    assert surcharge_cap(amount=amount, surcharge=surcharge, tip=tip, rate_bps=rate) == cap


def test_surcharge_rules() -> None:
    assert fields(
        BASE | {"surcharge_amount": 1}, rule={"enabled": False, "rate_bps": 300, "max_amount": 0}
    ) == {"surcharge_amount"}
    assert draft(BASE | {"amount": 1030, "surcharge_amount": 30}).body.surcharge_amount == 30
    assert fields(BASE | {"amount": 1031, "surcharge_amount": 31}) == {"surcharge_amount"}
    capped = {"enabled": True, "rate_bps": 300, "max_amount": 10}
    assert fields(BASE | {"amount": 1030, "surcharge_amount": 30}, rule=capped) == {
        "surcharge_amount"
    }


def test_card_errors_are_422_after_the_400s() -> None:
    with pytest.raises(InvalidCard):
        draft(BASE, card={"pan": "4242424242424241", "expiry": "3012"})
    assert fields(
        BASE | {"currency": "EUR"}, card={"pan": "4242424242424241", "expiry": "3012"}
    ) == {"currency"}
    assert fields(BASE, card=None) == {"card"}


def terminal(count: int, activated_days_ago: float) -> AuthenticatedTerminal:
    now = datetime.now(UTC)
    return AuthenticatedTerminal(
        terminal_id="TID-000001",
        device_id="POS-00000001",
        merchant_id="mer_1",
        currency="USD",
        key_set_id="ks_1",
        msk_key_id="msk_1",
        envelope_count=count,
        key_set_activated_at=now - timedelta(days=activated_days_ago),
        method="POST",
        path="/pos/charge",
        query="",
        nonce="n" * 12,
        idempotency_key=None,
        version="1.4.2",
        body=b"",
    )


@pytest.mark.parametrize(
    ("count", "days", "rotate", "exhausted"),
    [
        (0, 0, False, False),
        (899, 0, False, False),
        (900, 0, True, False),
        (999, 0, True, False),
        (1000, 0, True, True),
        (0, 26.9, False, False),
        (0, 27.01, True, False),
        (0, 30.01, True, True),
    ],
)
def test_the_key_set_budget(count: int, days: float | int, rotate: bool, exhausted: bool) -> None:
    usage = key_set_usage(terminal(count, days), max_envelopes=1000, now=datetime.now(UTC))
    assert (usage.rotate, usage.exhausted) == (rotate, exhausted)
