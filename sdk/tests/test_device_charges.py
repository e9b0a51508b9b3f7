"""Charge endpoints against the fake server: signatures, envelopes, idempotency and retries."""

import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from device_fake import TERMINAL_ID, FakeServer, activate, make_client
from viopay_device import (
    DeviceClient,
    IdempotencyConflict,
    InvalidCard,
    KeySet,
    NotActivated,
    OutcomeUnknown,
)
from viopay_device.protocol.envelope import card_aad, open_envelope, parse_envelope, request_aad
from viopay_device.protocol.pinblock import decipher_pin_block
from viopay_device.protocol.signing import charge_string_to_sign, verify_signature

CARD = {"pan": "4242424242424242", "expiry": "2812", "cardholder_name": "A CUSTOMER"}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def charge_requests(server: FakeServer, path: str = "/pos/charge") -> list[httpx.Request]:
    return [r for r in server.requests if r.url.path == path]


def current(client: DeviceClient) -> KeySet:
    key_set = client.key_store.current
    assert key_set is not None
    return key_set


def with_transport(
    server: FakeServer, wrap: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> DeviceClient:
    """An activated client whose transport goes through ``wrap`` (which may call server.handle)."""
    client = make_client(server, transport=httpx.MockTransport(wrap), **kwargs)
    activate(client, server)
    server.requests.clear()
    return client


def test_a_charge_is_signed_sealed_and_answered(
    server: FakeServer, activated: DeviceClient
) -> None:
    charge = activated.charge(
        amount=1250,
        currency="USD",
        entry_mode="chip",
        card=CARD,
        pin="1234",
        tip_amount=100,
        reference="order-1234",
    )
    assert charge.approved and charge.id == "ch_1" and not charge.replayed
    assert (charge.card.bin, charge.card.last4) == ("424242", "4242")

    key_set = current(activated)
    (request,) = charge_requests(server)
    h = request.headers
    assert h["X-Terminal-Id"] == TERMINAL_ID and h["X-Key-Id"] == key_set.hmac_key_id
    assert UUID4.match(h["Idempotency-Key"])
    assert h["Content-Type"] == "application/json"
    # the signature covers exactly the bytes sent
    message = charge_string_to_sign(
        method="POST",
        path="/pos/charge",
        query="",
        body=request.content,
        terminal_id=TERMINAL_ID,
        timestamp=h["X-Timestamp"],
        nonce=h["X-Nonce"],
    )
    verify_signature(key_set.key("MAC"), message, h["X-Signature"])
    # the body is an MSK envelope for this path and terminal; the card a TDK envelope
    envelope = parse_envelope(orjson.loads(request.content))
    assert envelope.kid == key_set.msk_kid
    aad = request_aad(method="POST", path="/pos/charge", subject=TERMINAL_ID)
    plaintext = orjson.loads(open_envelope(key_set.key("MSK"), envelope, aad))
    assert plaintext["amount"] == 1250 and plaintext["tip_amount"] == 100
    assert plaintext["reference"] == "order-1234" and "emv" not in plaintext
    assert plaintext["card"]["kid"] == key_set.key_ids["TDK"]
    card = orjson.loads(
        open_envelope(key_set.key("TDK"), parse_envelope(plaintext["card"]), card_aad(TERMINAL_ID))
    )
    assert card == CARD
    pin = decipher_pin_block(
        tpk=key_set.key("TPK"), pin_block=plaintext["pin_block"], pan=CARD["pan"]
    )
    assert pin == "1234"
    assert CARD["pan"].encode() not in request.content


def test_idempotency_key_is_stable_across_a_lost_answer(server: FakeServer) -> None:
    lost: list[int] = []

    def lose_first_answer(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if request.url.path == "/pos/charge" and not lost:
            lost.append(1)
            raise httpx.ReadTimeout("lost", request=request)
        return response

    slept: list[float] = []
    client = with_transport(server, lose_first_answer, sleep=slept.append)
    charge = client.charge(
        amount=500, currency="USD", entry_mode="contactless", card=CARD, pin="1234"
    )

    first, second = charge_requests(server)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["X-Nonce"] != second.headers["X-Nonce"]
    assert first.content != second.content  # sealed afresh
    assert charge.replayed and charge.id == "ch_1" and len(server.charges) == 1
    assert slept == [0.5]


def test_a_given_idempotency_key_is_used(server: FakeServer, activated: DeviceClient) -> None:
    activated.charge(
        amount=500, currency="USD", entry_mode="chip", card=CARD, idempotency_key="order-77"
    )
    assert charge_requests(server)[0].headers["Idempotency-Key"] == "order-77"
    with pytest.raises(IdempotencyConflict):
        activated.charge(
            amount=600, currency="USD", entry_mode="chip", card=CARD, idempotency_key="order-77"
        )


def test_in_progress_is_retried_with_the_same_key(server: FakeServer) -> None:
    calls: list[str] = []

    def busy_once(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pos/charge" and not calls:
            calls.append(request.headers["Idempotency-Key"])
            return httpx.Response(409, json={"code": "idempotency_in_progress", "status": 409})
        return server.handle(request)

    client = with_transport(server, busy_once)
    charge = client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert charge_requests(server)[0].headers["Idempotency-Key"] == calls[0]
    assert not charge.replayed


@pytest.mark.parametrize("reached", [True, False], ids=["charge-made", "never-arrived"])
def test_an_unknown_outcome_is_reversed_by_key(server: FakeServer, reached: bool) -> None:
    def charges_never_answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pos/charge":
            if reached:
                server.handle(request)
            raise httpx.ConnectTimeout("down", request=request)
        return server.handle(request)

    client = with_transport(server, charges_never_answer)
    with pytest.raises(OutcomeUnknown) as caught:
        client.charge(
            amount=500, currency="USD", entry_mode="chip", card=CARD, idempotency_key="k-1"
        )
    error = caught.value
    assert error.idempotency_key == "k-1" and error.reversal is not None
    assert isinstance(error.__cause__, httpx.TransportError)
    if reached:
        assert error.reversal.charge is not None and error.reversal.charge.status == "reversed"
    else:
        assert error.reversal.charge is None
    (reverse,) = charge_requests(server, "/pos/charge/reverse")
    assert reverse.headers["Idempotency-Key"] != "k-1"
    assert CARD["pan"] not in str(error) and CARD["pan"] not in repr(error)


def test_an_answer_for_another_request_is_refused(server: FakeServer) -> None:
    kept: list[httpx.Response] = []

    def replay_first_answer(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if request.url.path != "/pos/charge":
            return response
        kept.append(response)
        return httpx.Response(kept[0].status_code, content=kept[0].content)

    client = with_transport(server, replay_first_answer)
    client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    with pytest.raises(OutcomeUnknown) as caught:  # sealed for the first request's nonce
        client.charge(amount=700, currency="USD", entry_mode="chip", card=CARD)
    assert caught.value.reversal is not None


def test_a_rotate_keys_answer_rotates(server: FakeServer, activated: DeviceClient) -> None:
    old = current(activated)
    server.rotate_keys = True
    charge = activated.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert charge.rotate_keys
    assert current(activated).key_set_id != old.key_set_id
    assert activated.key_store.previous is old and not activated.needs_rotation
    rotation = [r.url.path for r in server.requests[1:]]
    assert rotation == ["/pos/attest", "/pos/keys", "/pos/config", "/pos/activate"]


def test_without_auto_rotate_the_flag_is_exposed(server: FakeServer) -> None:
    client = make_client(server, auto_rotate=False)
    activate(client, server)
    old = current(client)
    server.rotate_keys = True
    client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert client.needs_rotation and current(client) is old
    client.rotate_keys()
    assert not client.needs_rotation and client.key_store.previous is old


def test_refund_cancel_reverse_and_get(server: FakeServer, activated: DeviceClient) -> None:
    charge = activated.charge(amount=1000, currency="USD", entry_mode="chip", card=CARD)
    refund = activated.refund(charge.id, amount=400, reason="requested_by_customer")
    assert refund.amount == 400 and refund.charge is not None
    assert refund.charge.amount_refunded == 400
    assert activated.get_charge(charge.id).status == "refunded"
    second = activated.charge(amount=1000, currency="USD", entry_mode="chip", card=CARD)
    assert activated.cancel(second.id).status == "canceled"
    third = activated.charge(amount=1000, currency="USD", entry_mode="chip", card=CARD)
    assert activated.reverse(third.id).status == "reversed"

    get = next(r for r in server.requests if r.method == "GET")
    assert get.content == b"" and "Idempotency-Key" not in get.headers
    cancel = charge_requests(server, f"/pos/charge/{second.id}/cancel")[0]
    assert cancel.content == b"" and cancel.headers["Idempotency-Key"]
    assert "Content-Type" not in cancel.headers
    refund_body = charge_requests(server, f"/pos/charge/{charge.id}/refund")[0].content
    assert parse_envelope(orjson.loads(refund_body)).kid == current(activated).msk_kid


def test_a_problem_maps_to_its_exception_without_the_pan(activated: DeviceClient) -> None:
    card = {"pan": "5105105105105100", "expiry": "2812"}
    with pytest.raises(InvalidCard) as caught:
        activated.charge(amount=500, currency="USD", entry_mode="chip", card=card)
    assert caught.value.status == 422 and caught.value.code == "invalid_card"
    assert caught.value.request_id == "req_1"
    assert card["pan"] not in str(caught.value) and card["pan"] not in repr(caught.value)


def test_charges_need_an_activated_key_set(client: DeviceClient) -> None:
    with pytest.raises(NotActivated):
        client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)


@pytest.mark.parametrize(
    ("kwargs", "secret"),
    [
        ({"pin": "12a4"}, "12a4"),
        ({"card": {"pan": "4242424242424242"}}, "4242424242424242"),
        ({"card": {"pan": "4242 4242", "expiry": "2812"}}, "4242 4242"),
        ({"card": {**CARD, "cvv": "123"}}, "123"),
        ({"idempotency_key": "has space"}, None),
    ],
)
def test_bad_input_is_refused_before_sending(
    server: FakeServer, activated: DeviceClient, kwargs: dict[str, Any], secret: str | None
) -> None:
    arguments: dict[str, Any] = {
        "amount": 500,
        "currency": "USD",
        "entry_mode": "chip",
        "card": CARD,
    }
    with pytest.raises(ValueError) as caught:
        activated.charge(**(arguments | kwargs))
    assert not server.requests
    if secret:
        assert secret not in str(caught.value)


def test_an_unstored_error_answering_a_retry_is_retried(server: FakeServer) -> None:
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/pos/charge":
            return server.handle(request)
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) == 1:
            server.handle(request)
            raise httpx.ReadTimeout("lost", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"code": "service_unavailable", "status": 503})
        return server.handle(request)

    client = with_transport(server, flaky)
    charge = client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert len(set(seen)) == 1 and len(seen) == 3
    assert charge.replayed and len(server.charges) == 1


def test_an_unreadable_answer_is_an_unknown_outcome(server: FakeServer) -> None:
    def garbled(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if request.url.path == "/pos/charge":
            return httpx.Response(201, text="<html>proxy</html>")
        return response

    client = with_transport(server, garbled)
    with pytest.raises(OutcomeUnknown) as caught:
        client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    reversal = caught.value.reversal
    assert reversal is not None and reversal.charge is not None
    assert reversal.charge.status == "reversed"


def test_a_failed_rotation_is_retried_before_the_next_charge(server: FakeServer) -> None:
    refuse_keys = [True]

    def keys_down_once(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pos/keys" and server.rotate_keys and refuse_keys:
            refuse_keys.clear()
            return httpx.Response(503, json={"code": "service_unavailable", "status": 503})
        return server.handle(request)

    client = with_transport(server, keys_down_once)
    old = current(client)
    server.rotate_keys = True
    charge = client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert charge.approved  # the answer is kept whatever the rotation did
    assert client.needs_rotation and current(client) is old
    assert type(client.last_rotation_error).__name__ == "ServiceUnavailable"

    server.rotate_keys = False
    server.requests.clear()
    client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    assert [r.url.path for r in server.requests] == [
        "/pos/attest",
        "/pos/keys",
        "/pos/config",
        "/pos/activate",
        "/pos/charge",
    ]
    assert not client.needs_rotation and client.key_store.previous is old
    assert charge_requests(server)[0].headers["X-Key-Id"] == current(client).hmac_key_id


def test_refund_without_an_answer_is_an_unknown_outcome(server: FakeServer) -> None:
    def refunds_never_answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/refund"):
            raise httpx.ConnectError("down", request=request)
        return server.handle(request)

    client = with_transport(server, refunds_never_answer, max_retries=1)
    charge = client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund(charge.id, idempotency_key="refund-1")
    assert caught.value.idempotency_key == "refund-1" and caught.value.reversal is None
    assert len(charge_requests(server, f"/pos/charge/{charge.id}/refund")) == 0
    assert "same idempotency key" in str(caught.value)
