"""The §1 check order of the charge endpoints: headers, version, terminal, key, timestamp,
signature, nonce, the key set's envelope limit, and the body's envelopes (PROTOCOL §1, §2.4,
§3.7, §3.10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import update

from support import charge_kit as kit
from support.helpers import Admin, MakeMerchant, Server, present
from viopay.keysets.models import KeySet
from viopay.runtime import Runtime
from viopay_device.protocol.envelope import card_aad, seal


async def set_envelope_count(runtime: Runtime, key_set_id: str, count: int) -> None:
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KeySet).where(KeySet.key_set_id == key_set_id).values(envelope_count=count)
        )


async def envelope_count(runtime: Runtime, key_set_id: str) -> int:
    async with runtime.sessions() as db:
        key_set = present(await db.get(KeySet, key_set_id))
        return key_set.envelope_count


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "X-Terminal-Id",
        "User-Agent",
        "X-Client-Type",
        "X-Key-Id",
        "X-Timestamp",
        "X-Nonce",
        "X-Signature",
    ],
)
def test_a_missing_header_is_400_naming_it(terminal: kit.PosTerminal, name: str) -> None:
    answer = terminal.charge(500, edit={name: None}) if name != "User-Agent" else None
    if answer is None:  # httpx always sends a User-Agent: send an empty one instead of none
        answer = terminal.charge(500, edit={"User-Agent": ""})
        assert (answer.status, answer.code) == (400, "invalid_header")
        return
    assert (answer.status, answer.code) == (400, "missing_header")
    assert name in answer.problem()["detail"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Terminal-Id", "TID 1"),
        ("X-Terminal-Id", "T" * 129),
        ("X-Key-Id", "k" * 129),
        ("X-Timestamp", "yesterday"),
        ("X-Nonce", "short"),
        ("X-Signature", "v1=abc"),
        ("X-Client-Type", "web"),
        ("User-Agent", "curl/8.0"),
        ("Idempotency-Key", "k" * 256),
        ("Idempotency-Key", "has space"),
    ],
)
def test_a_malformed_header_is_400_naming_it(
    terminal: kit.PosTerminal, name: str, value: Any
) -> None:
    answer = terminal.charge(500, edit={name: value})
    assert (answer.status, answer.code) == (400, "invalid_header")
    assert name in answer.problem()["detail"]


def test_a_255_character_idempotency_key_is_fine(terminal: kit.PosTerminal) -> None:
    assert terminal.charge(500, idempotency_key="k" * 255).status == 201


def test_an_old_app_version_is_426(terminal: kit.PosTerminal) -> None:
    answer = terminal.charge(500, edit={"User-Agent": "Viopay-POS/0.9.9 (Android 12; PAX-A920)"})
    assert (answer.status, answer.code) == (426, "app_version_unsupported")
    assert answer.problem()["min_supported_version"] == "1.0.0"


def test_an_unknown_terminal_is_401_before_anything_about_keys(terminal: kit.PosTerminal) -> None:
    # Not a TID-nnnnnn: the ids the server draws at random, any of which another test may hold.
    answer = terminal.charge(500, terminal_id="TID-NEVER-ISSUED", key_id="nonsense")
    assert (answer.status, answer.code) == (401, "unknown_terminal")


def test_a_disabled_device_is_403_and_enabling_restores_it(
    terminal: kit.PosTerminal, admin: Admin
) -> None:
    assert admin.http.post(f"/admin/devices/{terminal.device.device_id}/disable").status_code == 200
    answer = terminal.charge(500, key_id="nonsense")
    assert (answer.status, answer.code) == (403, "device_disabled")
    assert admin.http.post(f"/admin/devices/{terminal.device.device_id}/enable").status_code == 200
    assert terminal.charge(500).status == 201


def test_a_released_device_s_terminal_is_unknown(terminal: kit.PosTerminal, admin: Admin) -> None:
    charge = terminal.charge(500).json()
    assert admin.http.post(f"/admin/devices/{terminal.device.device_id}/release").status_code == 200
    assert terminal.get(charge["id"]).code == "unknown_terminal"


async def test_wrong_mac_key_ids_are_401_unknown_key(
    terminal: kit.PosTerminal,
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
) -> None:
    keys = terminal.keys
    assert terminal.charge(500, key_id=keys.key_ids["MSK"]).code == "unknown_key"  # not the MAC key
    assert terminal.charge(500, key_id="mac_doesnotexist").code == "unknown_key"
    other = await kit.activated_terminal(server, admin, make_merchant, runtime)
    try:  # another terminal's MAC key, signing with it: still not a key of this terminal
        answer = terminal.charge(500, key_id=other.keys.hmac_key_id, mac=other.keys.key("MAC"))
        assert (answer.status, answer.code) == (401, "unknown_key")
    finally:
        other.close()


def test_the_timestamp_window(terminal: kit.PosTerminal) -> None:
    now = datetime.now(UTC)
    late = terminal.charge(500, timestamp=kit.stamp(now - timedelta(seconds=330)))
    assert (late.status, late.code) == (401, "timestamp_out_of_window")
    assert "server_time" in late.problem()
    early = terminal.charge(500, timestamp=kit.stamp(now + timedelta(seconds=90)))
    assert early.code == "timestamp_out_of_window"
    assert terminal.charge(500, timestamp=kit.stamp(now + timedelta(seconds=30))).status == 201
    offset = (now - timedelta(seconds=10)).astimezone().isoformat()  # any RFC 3339 form
    assert terminal.charge(500, timestamp=offset).status == 201


def test_a_signature_over_a_changed_body_is_401(terminal: kit.PosTerminal) -> None:
    signed = terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext(500))
    sent = terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext(50_000))
    answer = terminal.send("POST", "/pos/charge", body=sent, sign_body=signed)
    assert (answer.status, answer.code) == (401, "invalid_signature")
    assert "50000" not in answer.response.text


def test_the_signature_covers_the_query_and_the_mac_key(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(500).json()
    assert terminal.get(charge["id"], query="expand=refunds").status == 200  # signed with its query
    answer = terminal.get(charge["id"], query="a=1", edit={})
    assert answer.status == 200
    wrong_key = terminal.get(charge["id"], mac=b"\x00" * 32)
    assert (wrong_key.status, wrong_key.code) == (401, "invalid_signature")


def test_a_reused_nonce_is_401_and_a_forged_request_spends_none(terminal: kit.PosTerminal) -> None:
    nonce = kit.new_nonce()
    forged = terminal.charge(500, nonce=nonce, mac=b"\x01" * 32)
    assert forged.code == "invalid_signature"
    assert terminal.charge(500, nonce=nonce).status == 201  # the forgery did not burn it
    replay = terminal.charge(500, nonce=nonce)
    assert (replay.status, replay.code) == (401, "nonce_reused")


def test_a_nonce_is_per_terminal_across_endpoints(terminal: kit.PosTerminal) -> None:
    nonce = kit.new_nonce()
    charge = terminal.charge(500, nonce=nonce).json()
    assert terminal.get(charge["id"], nonce=nonce).code == "nonce_reused"


def test_get_ignores_the_idempotency_key_header(terminal: kit.PosTerminal) -> None:
    charge = terminal.charge(500).json()
    answer = terminal.get(charge["id"], edit={"Idempotency-Key": "has space"})
    assert answer.status == 200 and not answer.replayed


# --- envelopes ----------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_415(terminal: kit.PosTerminal) -> None:
    answer = terminal.charge(500, edit={"Content-Type": "text/plain"})
    assert (answer.status, answer.code) == (415, "unsupported_media_type")
    empty = terminal.refund("ch_x", body=b"")  # a refund always has a body
    assert (empty.status, empty.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"v": 2, "kid": "k", "iv": "AAAAAAAAAAAAAAAA", "ct": "AAAAAAAAAAAAAAAAAAAAAA=="}',
        b'{"v": 1, "kid": "k", "iv": 5, "ct": "x"}',
        b'{"amount": 500}',
    ],
)
def test_a_body_that_is_not_an_envelope_is_400_invalid_request(
    terminal: kit.PosTerminal, body: bytes
) -> None:
    answer = terminal.send("POST", "/pos/charge", body=body)
    assert (answer.status, answer.code) == (400, "invalid_request")


def test_envelopes_that_do_not_open_are_400_decryption_failed(terminal: kit.PosTerminal) -> None:
    keys = terminal.keys
    plaintext = terminal.charge_plaintext(500)
    envelope = orjson.loads(terminal.seal_body("POST", "/pos/charge", plaintext))

    def send(obj: object) -> kit.Answer:
        return terminal.send("POST", "/pos/charge", body=orjson.dumps(obj))

    assert send({**envelope, "kid": "msk_unknown"}).code == "decryption_failed"
    assert send({**envelope, "kid": keys.key_ids["TDK"]}).code == "decryption_failed"
    assert send({**envelope, "iv": "AAAA"}).code == "decryption_failed"
    assert send({**envelope, "ct": "AAAA"}).code == "decryption_failed"
    tampered = envelope["ct"][:-4] + ("AAAA" if envelope["ct"][-4:] != "AAAA" else "BBBB")
    assert send({**envelope, "ct": tampered}).code == "decryption_failed"
    other_path = terminal.seal_body("POST", "/pos/charge/reverse", plaintext)  # AAD of another path
    assert terminal.send("POST", "/pos/charge", body=other_path).code == "decryption_failed"
    other_subject = terminal.seal_body("POST", "/pos/charge", plaintext, subject="TID-000001")
    assert terminal.send("POST", "/pos/charge", body=other_subject).code == "decryption_failed"


def test_a_card_envelope_that_does_not_open_is_400(terminal: kit.PosTerminal) -> None:
    keys = terminal.keys
    for card in (
        terminal.card(terminal_id="TID-000001"),  # AAD of another terminal
        seal(keys.key("MSK"), keys.msk_kid, orjson.dumps(kit.CARD), card_aad(terminal.terminal_id)),
        {
            "v": 1,
            "kid": keys.key_ids["TDK"],
            "iv": "AAAAAAAAAAAAAAAA",
            "ct": "AAAAAAAAAAAAAAAAAAAAAA==",
        },
    ):
        answer = terminal.send(
            "POST", "/pos/charge", terminal.charge_plaintext(500) | {"card": card}
        )
        assert (answer.status, answer.code) == (400, "decryption_failed")
    answer = terminal.send(
        "POST", "/pos/charge", terminal.charge_plaintext(500) | {"card": "4242424242424242"}
    )
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert "4242424242424242" not in answer.response.text


async def test_the_previous_key_set_works_during_its_grace_and_may_be_mixed(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    old = terminal.keys
    charge = terminal.charge(500).json()
    new = await kit.rotate(terminal, runtime)
    # X-Key-Id of the old set, body under the new set: the answer is sealed under the new MSK
    body = terminal.seal_body(
        "POST", "/pos/charge", terminal.charge_plaintext(500, key_set=new), key_set=new
    )
    mixed = terminal.send("POST", "/pos/charge", body=body, key_set=old)
    assert mixed.status == 201 and mixed.response.json()["kid"] == new.msk_kid
    bodyless = terminal.get(charge["id"], key_set=old)
    assert bodyless.response.json()["kid"] == old.msk_kid  # under X-Key-Id's set
    assert terminal.charge(500, key_set=old).status == 201  # card under the old TDK too
    async with runtime.sessions() as db, db.begin():  # the grace ends
        await db.execute(
            update(KeySet)
            .where(KeySet.key_set_id == old.key_set_id)
            .values(retires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert terminal.get(charge["id"], key_set=old).code == "unknown_key"
    stale_body = terminal.send("POST", "/pos/charge", terminal.charge_plaintext(500, key_set=old))
    assert stale_body.code == "decryption_failed"


# --- the key set's envelope budget (§3.10) ----------------------------------------------------------


async def test_envelopes_are_counted_both_ways(terminal: kit.PosTerminal, runtime: Runtime) -> None:
    key_set_id = terminal.keys.key_set_id
    before = await envelope_count(runtime, key_set_id)
    charge = terminal.charge(500).json()
    assert await envelope_count(runtime, key_set_id) == before + 2
    terminal.get(charge["id"])
    assert await envelope_count(runtime, key_set_id) == before + 3


async def test_rotate_keys_from_90_percent(terminal: kit.PosTerminal, runtime: Runtime) -> None:
    limit = runtime.settings.keyset_max_envelopes
    await set_envelope_count(runtime, terminal.keys.key_set_id, (limit * 9 + 9) // 10)
    charge = terminal.charge(500).json()
    assert charge["rotate_keys"] is True
    assert terminal.get(charge["id"]).json()["rotate_keys"] is True
    listed = terminal.merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    assert "rotate_keys" not in listed


async def test_past_the_limit_charge_and_refund_are_409_and_the_rest_works(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    charge = terminal.charge(900, idempotency_key="before-limit").json()
    limit = runtime.settings.keyset_max_envelopes
    await set_envelope_count(runtime, terminal.keys.key_set_id, limit)
    refused = terminal.charge(500, idempotency_key="limited")
    assert (refused.status, refused.code) == (409, "invalid_state")
    no_body = terminal.send("POST", "/pos/charge")  # the limit comes before the body
    assert no_body.code == "invalid_state"
    assert terminal.refund(charge["id"], {"amount": 1}).code == "invalid_state"
    assert terminal.get(charge["id"]).json()["rotate_keys"] is True
    assert terminal.reverse_by_key("before-limit").json()["status"] == "reversed"
    other = kit.CARD
    assert other  # cancel works too, on a charge made before the limit
    await set_envelope_count(runtime, terminal.keys.key_set_id, 0)
    fresh = terminal.charge(500).json()
    await set_envelope_count(runtime, terminal.keys.key_set_id, limit)
    assert terminal.cancel(fresh["id"]).json()["status"] == "canceled"
    await set_envelope_count(runtime, terminal.keys.key_set_id, 0)
    again = terminal.charge(500, idempotency_key="limited")  # the 409 was not stored
    assert again.status == 201 and not again.replayed


async def test_a_key_set_past_30_days_is_refused(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KeySet)
            .where(KeySet.key_set_id == terminal.keys.key_set_id)
            .values(activated_at=datetime.now(UTC) - timedelta(days=27, seconds=1))
        )
    assert terminal.charge(500).json()["rotate_keys"] is True
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KeySet)
            .where(KeySet.key_set_id == terminal.keys.key_set_id)
            .values(activated_at=datetime.now(UTC) - timedelta(days=30, seconds=1))
        )
    assert terminal.charge(500).code == "invalid_state"
