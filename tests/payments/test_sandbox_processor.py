"""The sandbox processor (PROTOCOL §4.6) behind the Processor interface (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viopay.payments.cards import check_card
from viopay.payments.processors import (
    AuthorizationRequest,
    ChargeRef,
    EncipheredPin,
    Processor,
    ProcessorFailure,
    ProcessorTimedOut,
    SandboxProcessor,
    build_processor,
)
from viopay.settings import Settings
from viopay_device.protocol.pinblock import encipher_pin_block

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TPK = bytes.fromhex("232bea94b2f08ef806e722c78812e10a98662dfe3f516feb7a11766f2ae4da1d")


def request(
    pan: str, *, expiry: str = "3012", pin: EncipheredPin | None = None, emv: str | None = None
) -> AuthorizationRequest:
    card = check_card(pan=pan, expiry=expiry, track2=None, cardholder_name=None)
    return AuthorizationRequest(
        reference="vpr_test",
        charge_id="ch_1",
        terminal_id="TID-000001",
        merchant_id="mer_1",
        amount=1250,
        currency="USD",
        entry_mode="chip",
        card=card,
        pin=pin,
        emv=emv,
        order_reference=None,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("pan", "approved", "code", "reason"),
    [
        ("4242424242424242", True, "00", None),
        ("5555555555554444", True, "00", None),
        ("378282246310005", True, "00", None),
        ("4000000000000002", False, "05", "card_declined"),
        ("4000000000009995", False, "51", "insufficient_funds"),
        ("4000000000000069", False, "54", "expired_card"),
        ("4000000000000127", False, "55", "incorrect_pin"),
        ("6011111111111117", True, "00", None),  # any other valid card
    ],
)
async def test_the_table(pan: str, approved: bool, code: str, reason: str | None) -> None:
    answer = await SandboxProcessor().authorize(request(pan))
    assert (answer.approved, answer.response_code, answer.decline_reason) == (
        approved,
        code,
        reason,
    )
    assert (answer.authorization_code is not None) == approved
    if approved:
        assert answer.authorization_code is not None
        assert len(answer.authorization_code) == 6 and answer.authorization_code.isalnum()
        assert answer.authorization_code == answer.authorization_code.upper()
    assert answer.emv_response is None


async def test_processor_error_and_timeout() -> None:
    with pytest.raises(ProcessorFailure):
        await SandboxProcessor().authorize(request("4000000000000119"))
    with pytest.raises(ProcessorTimedOut):
        await SandboxProcessor().authorize(request("4000000000000259"))


async def test_the_order_expired_then_0127_then_pin_then_table() -> None:
    sandbox = SandboxProcessor()
    # an expired card is 54 whatever its number, even the error and timeout ones
    for pan in ("4000000000000119", "4000000000000259", "4000000000000127", "4242424242424242"):
        assert (await sandbox.authorize(request(pan, expiry="2610"))).response_code == "54"
    good_pin = EncipheredPin(encipher_pin_block(tpk=TPK, pin="1234", pan="4000000000000127"), TPK)
    assert (
        await sandbox.authorize(request("4000000000000127", pin=good_pin))
    ).response_code == "55"
    bad_pin = EncipheredPin("00" * 16, TPK)
    for pan in ("4242424242424242", "4000000000000119", "4000000000009995"):
        assert (await sandbox.authorize(request(pan, pin=bad_pin))).response_code == "55"
    other_pan = EncipheredPin(encipher_pin_block(tpk=TPK, pin="1234", pan="5555555555554444"), TPK)
    assert (
        await sandbox.authorize(request("4242424242424242", pin=other_pan))
    ).response_code == "55"
    pin = EncipheredPin(encipher_pin_block(tpk=TPK, pin="1234", pan="4242424242424242"), TPK)
    assert (await sandbox.authorize(request("4242424242424242", pin=pin))).approved


async def test_emv_response_carries_8a() -> None:
    approved = await SandboxProcessor().authorize(request("4242424242424242", emv="9F2701"))
    assert approved.emv_response is not None
    assert approved.emv_response.startswith("8A023030") and "8906" in approved.emv_response
    declined = await SandboxProcessor().authorize(request("4000000000000002", emv="9F2701"))
    assert declined.emv_response == "8A023035"


async def test_refund_void_reverse_answer() -> None:
    sandbox = SandboxProcessor()
    ref = ChargeRef("ch_1", "TID-000001", 100, "USD", "vpr_1")
    await sandbox.refund(ref, reference="vpr_2", refund_id="re_1", amount=50)  # answers None
    await sandbox.void(ref, reference="vpr_3")
    await sandbox.reverse(ref, reference="vpr_4")
    assert await sandbox.lookup("vpr_1") is None  # no ledger without a database


def test_the_processor_is_chosen_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(SandboxProcessor(), Processor)
    assert isinstance(build_processor(Settings()), SandboxProcessor)
    monkeypatch.setenv("VIOPAY_PROCESSOR", "test_sandbox_processor:make_connector")
    assert isinstance(build_processor(Settings()), Connector)
    monkeypatch.setenv("VIOPAY_PROCESSOR", "nonsense")
    with pytest.raises(ValueError):
        build_processor(Settings())


class Connector(SandboxProcessor):
    """Stands for a real acquirer connector."""


def make_connector(settings: Settings) -> Processor:
    return Connector()


def test_reprs_hide_card_and_pin() -> None:
    pin = EncipheredPin("AB" * 16, TPK)
    text = repr(request("4242424242424242", pin=pin))
    assert "4242424242424242" not in text and "AB" * 16 not in text and TPK.hex() not in text
