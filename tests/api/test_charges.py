"""POST /pos/charge and friends through real servers (PROTOCOL §4): the sandbox rows of §4.6,
the charge object and its body rules, refunds, cancel, reverse and get."""

from __future__ import annotations

import re
from typing import Any

import pytest

from support import charge_kit as kit
from support.helpers import Admin, MakeMerchant, Server
from viopay.runtime import Runtime

CHARGE_MEMBERS = {
    "id",
    "object",
    "status",
    "amount",
    "currency",
    "amount_refunded",
    "tip_amount",
    "tax_amount",
    "surcharge_amount",
    "reference",
    "entry_mode",
    "card",
    "authorization_code",
    "response_code",
    "decline_reason",
    "emv_response",
    "terminal_id",
    "merchant_id",
    "created_at",
}


def test_an_approved_charge_is_created_and_sealed_for_this_request(
    terminal: kit.PosTerminal,
) -> None:
    answer = terminal.charge(
        1250,
        tip_amount=100,
        tax_amount=103,
        reference="order-1234",
        pin=kit.PIN,
        emv="9F2608C2C12B098F3DA6E3",
    )
    assert answer.status == 201, answer.response.text
    charge = answer.json()
    assert set(charge) == CHARGE_MEMBERS
    assert charge["id"].startswith("ch_") and charge["object"] == "charge"
    assert (charge["status"], charge["response_code"], charge["decline_reason"]) == (
        "approved",
        "00",
        None,
    )
    assert re.fullmatch(r"[A-Z0-9]{6}", charge["authorization_code"])
    assert charge["card"] == {"brand": "visa", "bin": "424242", "last4": "4242", "expiry": "3012"}
    assert (
        charge["amount"],
        charge["tip_amount"],
        charge["tax_amount"],
        charge["surcharge_amount"],
    ) == (1250, 100, 103, 0)
    assert charge["amount_refunded"] == 0 and charge["reference"] == "order-1234"
    assert charge["emv_response"].startswith("8A023030")
    assert charge["terminal_id"] == terminal.terminal_id
    assert charge["merchant_id"] == terminal.merchant.merchant_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", charge["created_at"])
    assert "rotate_keys" not in charge


@pytest.mark.parametrize(
    ("pan", "status", "code", "reason"),
    [
        ("4242424242424242", "approved", "00", None),
        ("5555555555554444", "approved", "00", None),
        ("378282246310005", "approved", "00", None),
        ("6011111111111117", "approved", "00", None),
        ("4000000000000002", "declined", "05", "card_declined"),
        ("4000000000009995", "declined", "51", "insufficient_funds"),
        ("4000000000000069", "declined", "54", "expired_card"),
        ("4000000000000127", "declined", "55", "incorrect_pin"),
    ],
)
def test_sandbox_answers(
    terminal: kit.PosTerminal, pan: str, status: str, code: str, reason: str | None
) -> None:
    answer = terminal.charge(500, card={"pan": pan, "expiry": "3012"})
    assert answer.status == 201  # a decline is a created charge
    charge = answer.json()
    assert (charge["status"], charge["response_code"], charge["decline_reason"]) == (
        status,
        code,
        reason,
    )
    assert (charge["authorization_code"] is None) == (status == "declined")
    assert charge["emv_response"] is None  # no emv sent


def test_an_expired_card_is_declined_54_whatever_its_number(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(500, card={"pan": "4000000000000259", "expiry": "2001"}).json()
    assert (charge["status"], charge["response_code"], charge["decline_reason"]) == (
        "declined",
        "54",
        "expired_card",
    )


def test_a_pin_block_that_does_not_decipher_is_declined_55(terminal: kit.PosTerminal) -> None:
    wrong = terminal.charge_plaintext(500)
    wrong["pin_block"] = "0" * 32
    charge = terminal.send("POST", "/pos/charge", wrong).json()
    assert (charge["status"], charge["response_code"]) == ("declined", "55")
    good = terminal.charge(500, pin="4321").json()
    assert good["status"] == "approved"


def test_a_pin_block_that_is_not_32_hex_digits_is_400(terminal: kit.PosTerminal) -> None:
    plaintext = terminal.charge_plaintext(500)
    plaintext["pin_block"] = "1234"
    answer = terminal.send("POST", "/pos/charge", plaintext)
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert answer.problem()["errors"][0]["field"] == "pin_block"


def test_processor_error_makes_no_charge(terminal: kit.PosTerminal) -> None:
    answer = terminal.charge(500, card={"pan": "4000000000000119", "expiry": "3012"})
    assert (answer.status, answer.code) == (502, "processor_error")
    listed = terminal.merchant.http.get("/merchant/charges").json()
    assert listed["data"] == []


def test_processor_timeout_reverses_and_stores_the_charge(terminal: kit.PosTerminal) -> None:
    answer = terminal.charge(500, card={"pan": "4000000000000259", "expiry": "3012"})
    assert (answer.status, answer.code) == (504, "processor_timeout")
    charge_id = answer.problem()["charge_id"]
    charge = terminal.get(charge_id).json()
    assert (charge["status"], charge["response_code"], charge["decline_reason"]) == (
        "reversed",
        "68",
        "processor_timeout",
    )
    assert charge["authorization_code"] is None


def test_tip_tax_and_surcharge_rules(terminal: kit.PosTerminal) -> None:
    def problem(amount: Any = 1000, **members: Any) -> set[str]:
        answer = terminal.charge(amount, **members)
        assert (answer.status, answer.code) == (400, "invalid_request"), answer.response.text
        return {e["field"] for e in answer.problem()["errors"]}

    assert problem(currency="EUR") == {"currency"}
    assert problem(tip_amount=600, tax_amount=500) == {"amount"}
    assert problem(tip_amount=-1) == {"tip_amount"}
    assert problem(surcharge_amount=10) == {"surcharge_amount"}  # surcharge off by default
    assert problem(amount="1000") == {"amount"}
    assert problem(entry_mode="telepathy") == {"entry_mode"}
    assert problem(reference="x" * 65) == {"reference"}
    put = terminal.merchant.http.put(
        "/merchant/config", json={"surcharge": {"enabled": True, "rate_bps": 300, "max_amount": 25}}
    )
    assert put.status_code == 200, put.text
    # 3 % of 1000 - 25 - 100 = 875 → 26.25 → 26; capped by max_amount 25
    assert problem(surcharge_amount=26, tip_amount=100) == {"surcharge_amount"}
    charge = terminal.charge(1000, surcharge_amount=25, tip_amount=100).json()
    assert (charge["surcharge_amount"], charge["tip_amount"]) == (25, 100)
    put = terminal.merchant.http.put(
        "/merchant/config", json={"surcharge": {"enabled": True, "rate_bps": 250, "max_amount": 0}}
    )
    assert put.status_code == 200
    assert terminal.charge(1010, surcharge_amount=10).status == 201  # cap 2.5 % of 1000 = 25
    assert problem(amount=1030, surcharge_amount=26) == {"surcharge_amount"}  # 25.1 → 25
    assert terminal.charge(1005, surcharge_amount=25).status == 201  # 24.5 → 25: half up


@pytest.mark.parametrize(
    "card",
    [
        {"pan": "4242424242424241", "expiry": "3012"},  # Luhn
        {"pan": "9999999999999995", "expiry": "3012"},  # no brand
        {"pan": "42424242424", "expiry": "3012"},  # 11 digits
        {"pan": "4242 4242 4242 4242", "expiry": "3012"},
        {"pan": "4242424242424242", "expiry": "3013"},  # month 13
        {"pan": "4242424242424242", "expiry": "12/30"},
    ],
)
def test_an_invalid_card_is_422(terminal: kit.PosTerminal, card: dict[str, str]) -> None:
    answer = terminal.charge(500, card=card)
    assert (answer.status, answer.code) == (422, "invalid_card")
    assert card["pan"] not in answer.response.text


def test_body_member_errors_come_before_invalid_card(terminal: kit.PosTerminal) -> None:
    answer = terminal.charge(0, card={"pan": "4242424242424241", "expiry": "3012"})
    assert (answer.status, answer.code) == (400, "invalid_request")
    plaintext = terminal.charge_plaintext(500)
    del plaintext["card"]
    answer = terminal.send("POST", "/pos/charge", plaintext)
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert answer.problem()["errors"] == [{"field": "card", "message": "is required"}]


def test_refunds_partial_then_full_then_refused(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(1000).json()
    first = terminal.refund(charge["id"], {"amount": 300, "reason": "requested_by_customer"})
    assert first.status == 201
    refund = first.json()
    assert set(refund) == {
        "id",
        "object",
        "charge_id",
        "amount",
        "reason",
        "status",
        "created_at",
        "charge",
    }
    assert (
        refund["id"].startswith("re_")
        and refund["object"] == "refund"
        and refund["status"] == "succeeded"
    )
    assert (refund["amount"], refund["reason"], refund["charge_id"]) == (
        300,
        "requested_by_customer",
        charge["id"],
    )
    assert (refund["charge"]["status"], refund["charge"]["amount_refunded"]) == (
        "partially_refunded",
        300,
    )
    too_much = terminal.refund(charge["id"], {"amount": 701})
    assert (too_much.status, too_much.code) == (422, "refund_exceeds_charge")
    rest = terminal.refund(charge["id"]).json()  # {} refunds all that is left
    assert rest["amount"] == 700 and rest["charge"]["status"] == "refunded"
    again = terminal.refund(charge["id"], {"amount": 1})
    assert (again.status, again.code) == (409, "charge_not_refundable")


def test_refund_order_404_409_400_422(terminal: kit.PosTerminal) -> None:
    assert terminal.refund("ch_nope", {"amount": "x"}).code == "not_found"
    declined = terminal.charge(500, card={"pan": "4000000000000002", "expiry": "3012"}).json()
    assert terminal.refund(declined["id"], {"amount": "x"}).code == "charge_not_refundable"
    charge = terminal.charge(500).json()
    bad = terminal.refund(charge["id"], {"amount": 0})
    assert (bad.status, bad.code) == (400, "invalid_request") and bad.problem()["errors"][0][
        "field"
    ] == "amount"
    assert terminal.refund(charge["id"], {"amount": 501}).code == "refund_exceeds_charge"
    canceled = terminal.charge(500).json()
    assert terminal.cancel(canceled["id"]).json()["status"] == "canceled"
    assert terminal.refund(canceled["id"], {"amount": 1}).code == "charge_not_refundable"


def test_cancel_and_reverse_repeat_and_refuse(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(800).json()
    canceled = terminal.cancel(charge["id"])
    assert canceled.status == 200 and canceled.json()["status"] == "canceled"
    assert terminal.cancel(charge["id"]).json() == canceled.json()  # repeating answers the same
    assert terminal.reverse(charge["id"]).code == "charge_not_cancelable"

    other = terminal.charge(800).json()
    reversed_ = terminal.reverse(other["id"]).json()
    assert reversed_["status"] == "reversed"
    assert terminal.reverse(other["id"]).json()["status"] == "reversed"
    assert terminal.cancel(other["id"]).code == "charge_not_cancelable"

    refunded = terminal.charge(800).json()
    assert terminal.refund(refunded["id"], {"amount": 100}).status == 201
    after_refund = terminal.cancel(refunded["id"])
    assert (after_refund.status, after_refund.code) == (409, "charge_not_cancelable")
    declined = terminal.charge(800, card={"pan": "4000000000009995", "expiry": "3012"}).json()
    assert terminal.reverse(declined["id"]).code == "charge_not_cancelable"
    assert terminal.cancel("ch_missing").code == "not_found"


def test_get_answers_the_charge_as_it_stands(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(900).json()
    terminal.refund(charge["id"], {"amount": 100})
    now = terminal.get(charge["id"])
    assert now.status == 200 and now.json()["amount_refunded"] == 100
    assert terminal.get("ch_unknown").code == "not_found"


async def test_charges_are_the_merchants_not_the_terminals(
    terminal: kit.PosTerminal,
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
) -> None:
    charge = terminal.charge(500).json()
    sibling = await kit.activated_terminal(
        server, admin, make_merchant, runtime, merchant=terminal.merchant
    )
    stranger = await kit.activated_terminal(server, admin, make_merchant, runtime)
    try:
        assert sibling.get(charge["id"]).json()["id"] == charge["id"]
        assert sibling.refund(charge["id"], {"amount": 100}).status == 201
        assert stranger.get(charge["id"]).code == "not_found"
        assert stranger.refund(charge["id"], {"amount": 1}).code == "not_found"
        assert stranger.cancel(charge["id"]).code == "not_found"
        assert stranger.reverse(charge["id"]).code == "not_found"
    finally:
        sibling.close()
        stranger.close()
