"""The device SDK (viopay_device) against real servers: charges, refunds, cancel, reverse,
replays after lost answers, and reverse-by-key of unknown outcomes (PROTOCOL §4)."""

from __future__ import annotations

import httpx
import pytest

from support import charge_kit as kit
from support.helpers import present
from viopay_device import (
    ChargeNotCancelable,
    DeviceClient,
    IdempotencyConflict,
    InvalidCard,
    InvalidState,
    OutcomeUnknown,
    ProcessorError,
    ProcessorTimeout,
    RefundExceedsCharge,
)


def test_the_sdk_charges_refunds_cancels_reverses_and_reads(terminal: kit.PosTerminal) -> None:
    client = terminal.client
    charge = client.charge(
        amount=1250,
        currency="USD",
        entry_mode="chip",
        card=kit.CARD,
        pin=kit.PIN,
        tip_amount=100,
        reference="order-1",
    )
    assert charge.approved and charge.id.startswith("ch_") and not charge.replayed
    assert (charge.card.brand, charge.card.last4) == ("visa", "4242")
    refund = client.refund(charge.id, amount=250, reason="requested_by_customer")
    assert (
        refund.amount == 250 and refund.charge is not None and refund.charge.amount_refunded == 250
    )
    assert client.get_charge(charge.id).status == "partially_refunded"
    with pytest.raises(RefundExceedsCharge):
        client.refund(charge.id, amount=10_000)
    with pytest.raises(ChargeNotCancelable):
        client.cancel(charge.id)
    second = client.charge(amount=500, currency="USD", entry_mode="contactless", card=kit.CARD)
    assert client.cancel(second.id).status == "canceled"
    third = client.charge(amount=500, currency="USD", entry_mode="swipe", card=kit.CARD)
    assert client.reverse(third.id).status == "reversed"
    with pytest.raises(InvalidCard):
        client.charge(
            amount=500,
            currency="USD",
            entry_mode="chip",
            card={"pan": "4242424242424241", "expiry": "3012"},
        )


def test_the_sdk_replays_with_its_idempotency_key(terminal: kit.PosTerminal) -> None:
    client = terminal.client
    first = client.charge(
        amount=700, currency="USD", entry_mode="chip", card=kit.CARD, idempotency_key="order-9"
    )
    again = client.charge(
        amount=700,
        currency="USD",
        entry_mode="chip",
        card=kit.CARD,
        pin=kit.PIN,
        idempotency_key="order-9",
    )  # a new PIN block is not part of the fingerprint
    assert again.replayed and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        client.charge(
            amount=701, currency="USD", entry_mode="chip", card=kit.CARD, idempotency_key="order-9"
        )


def test_the_sdk_reverses_by_key(terminal: kit.PosTerminal) -> None:
    client = terminal.client
    charge = client.charge(
        amount=700, currency="USD", entry_mode="chip", card=kit.CARD, idempotency_key="k-rev"
    )
    reversal = client.reverse_by_key("k-rev")
    assert (
        reversal.charge is not None
        and reversal.charge.id == charge.id
        and reversal.charge.status == "reversed"
    )
    assert present(client.reverse_by_key("k-rev").charge).status == "reversed"
    nothing = client.reverse_by_key("k-never")
    assert nothing.charge is None


class LossyTransport(httpx.BaseTransport):
    """Forwards to the real server; loses the first ``lose`` answers to POST /pos/charge, or
    (``arrive=False``) never lets those requests arrive."""

    def __init__(self, lose: int, *, arrive: bool = True) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose, self.arrive, self.lost = lose, arrive, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/pos/charge" or self.lost >= self.lose:
            return self.inner.handle_request(request)
        self.lost += 1
        if not self.arrive:
            raise httpx.ConnectError("down", request=request)
        response = self.inner.handle_request(request)
        response.read()
        response.close()
        raise httpx.ReadTimeout("lost", request=request)

    def close(self) -> None:
        self.inner.close()


def lossy_client(terminal: kit.PosTerminal, transport: httpx.BaseTransport) -> DeviceClient:
    return DeviceClient(
        terminal.server.url,
        device_id=terminal.device.device_id,
        key_store=terminal.client.key_store,
        terminal_id=terminal.terminal_id,
        transport=transport,
        retry_backoff=0.05,
    )


def test_the_sdk_gets_the_stored_charge_after_a_lost_answer(terminal: kit.PosTerminal) -> None:
    with lossy_client(terminal, LossyTransport(1)) as client:
        charge = client.charge(
            amount=640, currency="USD", entry_mode="chip", card=kit.CARD, pin=kit.PIN
        )
    assert charge.replayed and charge.approved
    listed = terminal.merchant.http.get("/merchant/charges").json()["data"]
    assert [c["id"] for c in listed] == [charge.id]


@pytest.mark.parametrize("arrive", [True, False], ids=["charge-made", "never-arrived"])
def test_the_sdk_reverses_an_unknown_outcome_by_key(
    terminal: kit.PosTerminal, arrive: bool
) -> None:
    with (
        lossy_client(terminal, LossyTransport(99, arrive=arrive)) as client,
        pytest.raises(OutcomeUnknown) as caught,
    ):
        client.charge(
            amount=640, currency="USD", entry_mode="chip", card=kit.CARD, idempotency_key="lost-1"
        )
    reversal = caught.value.reversal
    assert reversal is not None
    if arrive:
        assert reversal.charge is not None and reversal.charge.status == "reversed"
    else:
        assert reversal.charge is None
        with pytest.raises(
            InvalidState
        ):  # the key is spent: a late charge never reaches the processor
            terminal.client.charge(
                amount=640,
                currency="USD",
                entry_mode="chip",
                card=kit.CARD,
                idempotency_key="lost-1",
            )


def test_the_sdk_sees_a_processor_timeout_and_its_stored_charge(terminal: kit.PosTerminal) -> None:
    card = {"pan": "4000000000000259", "expiry": "3012"}
    with pytest.raises(ProcessorTimeout) as caught:
        terminal.client.charge(
            amount=500, currency="USD", entry_mode="chip", card=card, idempotency_key="t-1"
        )
    assert caught.value.charge_id is not None
    retry = terminal.client.charge(
        amount=500, currency="USD", entry_mode="chip", card=card, idempotency_key="t-1"
    )
    assert retry.replayed and retry.id == caught.value.charge_id and retry.status == "reversed"
    with pytest.raises(ProcessorError):
        terminal.client.charge(
            amount=500,
            currency="USD",
            entry_mode="chip",
            card={"pan": "4000000000000119", "expiry": "3012"},
        )
