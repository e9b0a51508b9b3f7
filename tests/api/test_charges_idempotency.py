"""Idempotency-Key (PROTOCOL §4.5) and reverse-by-key (§4.4) through real servers, including
two server processes on one database and cache (PostgreSQL + Redis)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import func, select, update

from support import charge_kit as kit
from support.helpers import Admin, MakeMerchant, Server, present
from viopay.payments import idempotency
from viopay.payments.models import Charge, IdempotencyRecord
from viopay.runtime import Runtime


async def charges_with_key(runtime: Runtime, terminal_id: str, key: str) -> int:
    async with runtime.sessions() as db:
        return present(
            await db.scalar(
                select(func.count())
                .select_from(Charge)
                .where(Charge.terminal_id == terminal_id, Charge.idempotency_key == key)
            )
        )


def test_a_retry_sealed_afresh_answers_the_stored_charge(terminal: kit.PosTerminal) -> None:
    first = terminal.charge(1250, pin=kit.PIN, idempotency_key="order-1")
    assert first.status == 201 and not first.replayed
    retry = terminal.charge(
        1250, pin=kit.PIN, idempotency_key="order-1"
    )  # new IVs, PIN block, nonce
    assert retry.status == 200 and retry.replayed
    assert retry.json() == first.json()  # opened with the retry's own nonce


def test_another_request_with_the_key_is_422(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(1250, idempotency_key="order-2").json()
    other = terminal.charge(1251, idempotency_key="order-2")
    assert (other.status, other.code) == (422, "idempotency_key_reused")
    other_card = terminal.charge(
        1250, card={"pan": "5555555555554444", "expiry": "3012"}, idempotency_key="order-2"
    )
    assert other_card.code == "idempotency_key_reused"
    elsewhere = terminal.refund(charge["id"], {"amount": 1}, idempotency_key="order-2")  # all POSTs
    assert elsewhere.code == "idempotency_key_reused"


def test_4xx_results_replay_too(terminal: kit.PosTerminal) -> None:
    bad = {"pan": "4242424242424241", "expiry": "3012"}
    first = terminal.charge(500, card=bad, idempotency_key="bad-card")
    assert (first.status, first.code, first.replayed) == (422, "invalid_card", False)
    again = terminal.charge(500, card=bad, idempotency_key="bad-card")
    assert (again.status, again.code, again.replayed) == (422, "invalid_card", True)
    assert again.problem()["request_id"] == again.response.headers["x-request-id"]
    fixed = terminal.charge(500, idempotency_key="bad-card")
    assert fixed.code == "idempotency_key_reused"


def test_401s_and_processor_errors_are_not_stored(terminal: kit.PosTerminal) -> None:
    forged = terminal.charge(500, idempotency_key="k-401", mac=b"\x02" * 32)
    assert forged.code == "invalid_signature"
    assert terminal.charge(500, idempotency_key="k-401").status == 201

    error = {"pan": "4000000000000119", "expiry": "3012"}
    first = terminal.charge(500, card=error, idempotency_key="k-502")
    assert (first.status, first.code) == (502, "processor_error")
    again = terminal.charge(500, card=error, idempotency_key="k-502")
    assert (again.status, again.replayed) == (502, False)  # ran afresh
    different = terminal.charge(999, idempotency_key="k-502")
    assert different.status == 201  # the key was free again


def test_a_timeout_is_stored_as_the_reversed_charge(terminal: kit.PosTerminal) -> None:
    card = {"pan": "4000000000000259", "expiry": "3012"}
    first = terminal.charge(500, card=card, idempotency_key="k-504")
    assert (first.status, first.code) == (504, "processor_timeout")
    charge_id = first.problem()["charge_id"]
    retry = terminal.charge(500, card=card, idempotency_key="k-504")
    assert retry.status == 200 and retry.replayed
    charge = retry.json()
    assert (charge["id"], charge["status"], charge["response_code"]) == (
        charge_id,
        "reversed",
        "68",
    )


def test_bodyless_posts_and_refunds_replay(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(1000).json()
    refund = terminal.refund(charge["id"], {"amount": 400}, idempotency_key="r-1")
    again = terminal.refund(charge["id"], {"amount": 400}, idempotency_key="r-1")
    assert refund.status == 201 and again.status == 200 and again.replayed
    assert again.json()["id"] == refund.json()["id"]
    assert terminal.get(charge["id"]).json()["amount_refunded"] == 400

    other = terminal.charge(1000).json()
    canceled = terminal.cancel(other["id"], idempotency_key="c-1")
    assert canceled.status == 200 and not canceled.replayed
    repeat = terminal.cancel(other["id"], idempotency_key="c-1")
    assert repeat.replayed and repeat.json() == canceled.json()
    assert terminal.cancel(charge["id"], idempotency_key="c-1").code == "idempotency_key_reused"


async def test_keys_belong_to_their_terminal(
    terminal: kit.PosTerminal,
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
) -> None:
    mine = terminal.charge(500, idempotency_key="shared").json()
    other = await kit.activated_terminal(
        server, admin, make_merchant, runtime, merchant=terminal.merchant
    )
    try:
        theirs = other.charge(500, idempotency_key="shared")
        assert theirs.status == 201 and theirs.json()["id"] != mine["id"]
    finally:
        other.close()


async def test_stored_results_hold_no_card_number(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    terminal.charge(500, pin=kit.PIN, idempotency_key="stored")
    async with runtime.sessions() as db:
        record = await db.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.idempotency_key == "stored")
        )
        assert record is not None and record.status_code == 201
        text = orjson.dumps(record.result).decode()
    assert (
        kit.CARD["pan"] not in text
        and "pin" not in text
        and present(record.result)["card"]["last4"] == "4242"
    )


# --- running and spent keys ----------------------------------------------------------------------


async def test_a_running_key_is_409_and_comes_before_the_body(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    now = datetime.now(UTC)
    async with runtime.sessions() as db, db.begin():
        claimed = await idempotency.claim(
            db,
            terminal_id=terminal.terminal_id,
            key="busy",
            method="POST",
            path="/pos/charge",
            fingerprint="0" * 64,
            now=now,
        )
    assert isinstance(claimed, int)
    busy = terminal.charge(500, idempotency_key="busy")
    assert (busy.status, busy.code) == (409, "idempotency_in_progress")
    garbage = terminal.send("POST", "/pos/charge", body=b"{", idempotency_key="busy")
    assert garbage.code == "idempotency_in_progress"
    assert terminal.reverse_by_key("busy").code == "idempotency_in_progress"
    async with runtime.sessions() as db, db.begin():  # its request died long ago
        await db.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == claimed)
            .values(created_at=now - timedelta(minutes=10))
        )
    assert terminal.reverse_by_key("busy").json() == {"object": "reversal", "charge": None}
    assert terminal.charge(500, idempotency_key="busy").code == "invalid_state"


async def test_reverse_by_key_before_the_charge_spends_the_key(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    answer = terminal.reverse_by_key("late-key")
    assert answer.status == 200 and answer.json() == {"object": "reversal", "charge": None}
    assert terminal.reverse_by_key("late-key").json() == {"object": "reversal", "charge": None}
    late = terminal.charge(500, idempotency_key="late-key")
    assert (late.status, late.code) == (409, "invalid_state")
    spent_first = terminal.send("POST", "/pos/charge", body=b"{", idempotency_key="late-key")
    assert spent_first.code == "invalid_state"  # before the body
    assert await charges_with_key(runtime, terminal.terminal_id, "late-key") == 0


def test_reverse_by_key_answers_what_cannot_be_reversed_as_it_stands(
    terminal: kit.PosTerminal,
) -> None:
    declined = terminal.charge(
        500, card={"pan": "4000000000000002", "expiry": "3012"}, idempotency_key="d-1"
    )
    assert terminal.reverse_by_key("d-1").json()["status"] == "declined"
    refunded = terminal.charge(500, idempotency_key="f-1").json()
    terminal.refund(refunded["id"], {"amount": 100})
    answer = terminal.reverse_by_key("f-1").json()
    assert (answer["status"], answer["amount_refunded"]) == ("partially_refunded", 100)
    assert declined.status == 201
    reversed_ = terminal.charge(500, idempotency_key="v-1").json()
    assert terminal.reverse_by_key("v-1").json()["id"] == reversed_["id"]
    assert terminal.get(reversed_["id"]).json()["status"] == "reversed"
    invalid_card = terminal.charge(
        500, card={"pan": "4242424242424241", "expiry": "3012"}, idempotency_key="i-1"
    )
    assert invalid_card.status == 422
    assert terminal.reverse_by_key("i-1").json() == {"object": "reversal", "charge": None}


def test_reverse_by_key_body_rules(terminal: kit.PosTerminal) -> None:
    assert terminal.send("POST", "/pos/charge/reverse", {}).code == "invalid_request"
    own = terminal.send(
        "POST", "/pos/charge/reverse", {"idempotency_key": "same"}, idempotency_key="same"
    )
    assert (own.status, own.code) == (400, "invalid_request")


# --- two servers, one database --------------------------------------------------------------------


async def test_twenty_concurrent_requests_with_one_key_make_one_charge(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    prepared = []
    for i in range(20):
        body = terminal.seal_body(
            "POST", "/pos/charge", terminal.charge_plaintext(700, pin=kit.PIN)
        )
        headers = terminal.headers("POST", "/pos/charge", body, idempotency_key="race-1")
        prepared.append(((server if i % 2 else server_b).url + "/pos/charge", body, headers))

    def send(item: tuple[str, bytes, dict[str, str]]) -> httpx.Response:
        url, body, headers = item
        return httpx.post(url, content=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, prepared))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "idempotency_in_progress"
        elif response.status_code == 200:
            assert response.headers["idempotent-replayed"] == "true"
        else:
            assert response.status_code == 201
    assert await charges_with_key(runtime, terminal.terminal_id, "race-1") == 1
    settled = terminal.charge(700, idempotency_key="race-1", url=server_b.url)
    assert settled.status == 200 and settled.replayed


async def test_concurrent_partial_refunds_never_pass_the_amount(
    terminal: kit.PosTerminal, server: Server, server_b: Server
) -> None:
    charge = terminal.charge(1000).json()
    path = f"/pos/charge/{charge['id']}/refund"
    prepared = []
    for i in range(10):
        body = terminal.seal_body("POST", path, {"amount": 150})
        prepared.append(
            ((server if i % 2 else server_b).url + path, body, terminal.headers("POST", path, body))
        )

    def send(item: tuple[str, bytes, dict[str, str]]) -> httpx.Response:
        url, body, headers = item
        return httpx.post(url, content=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(send, prepared))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 6 + [422] * 4, statuses
    assert all(
        r.json()["code"] == "refund_exceeds_charge" for r in responses if r.status_code == 422
    )
    now = terminal.get(charge["id"]).json()
    assert (now["amount_refunded"], now["status"]) == (900, "partially_refunded")
    detail = terminal.merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    assert sum(r["amount"] for r in detail["refunds"]) == 900
