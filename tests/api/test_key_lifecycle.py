"""The operator's key lifecycle (issue 12), admin API and CLI: identity keys and key sets listed
with KCVs, states and ages (never a key), a forced key-set rotation, and what a revocation
killed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Backend,
    MerchantCtx,
    Server,
    claim_with,
    problem,
    sdk_client,
)
from viopay_device import activate_device
from viopay_device.protocol.kcv import hmac_kcv

CARD = {"pan": "4242424242424242", "expiry": "3012"}


def _register(client: Any) -> None:
    for key_set in (client.key_store.current, client.key_store.pending, client.key_store.previous):
        if key_set is not None:
            for key_type in key_set.key_ids:
                SEEN_SECRETS.add(key_set.key(key_type).hex())


@pytest.fixture
def activated(server: Server, admin: Any, make_merchant: Any) -> Iterator[Any]:
    owner: MerchantCtx = make_merchant()
    device = admin.provision()
    client = sdk_client(server.url, device)
    terminal_id = claim_with(client, owner)
    activate_device(client, sleep=lambda _: None)
    _register(client)
    yield client, terminal_id, device, owner
    client.close()


def _no_secret_in(body: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in body


def test_identity_keys_listed_with_kcv_state_and_age(admin: Any, backend: Backend) -> None:
    device = admin.provision()
    second = admin.http.post(f"/admin/devices/{device.device_id}/identity-keys", json={})
    assert second.status_code == 201
    k2 = second.json()
    SEEN_SECRETS.add(k2["identity_secret"])
    revoked = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/{k2['key_id']}")
    assert revoked.status_code == 200
    answer = admin.http.get(f"/admin/devices/{device.device_id}/identity-keys")
    assert answer.status_code == 200
    _no_secret_in(answer.text, device.identity_secret, k2["identity_secret"])
    body = answer.json()
    assert body["device_id"] == device.device_id
    by_id = {k["key_id"]: k for k in body["data"]}
    assert by_id[device.key_id]["kcv"] == hmac_kcv(device.secret)
    assert by_id[device.key_id]["state"] == "live" and by_id[device.key_id]["revoked_at"] is None
    assert by_id[k2["key_id"]]["kcv"] == hmac_kcv(bytes.fromhex(k2["identity_secret"]))
    assert by_id[k2["key_id"]]["state"] == "revoked"
    assert all(k["age_seconds"] >= 0 for k in body["data"])
    # The CLI says the same.
    listed = backend.cli("keys", "identity-keys", device.device_id)
    assert {k["key_id"]: k["kcv"] for k in listed["data"]} == {
        k: v["kcv"] for k, v in by_id.items()
    }
    problem(admin.http.get("/admin/devices/POS-FFFFFFFF/identity-keys"), 404, "not_found")


def test_forced_rotation_then_old_set_retires_after_grace(
    activated: Any, admin: Any, backend: Backend
) -> None:
    client, terminal_id, _, _ = activated
    first = client.key_store.current
    sets = admin.http.get(f"/admin/terminals/{terminal_id}/key-sets")
    assert sets.status_code == 200
    _no_secret_in(sets.text, *(first.key(t).hex() for t in first.key_ids))
    (only,) = sets.json()["data"]
    assert only["key_set_id"] == first.key_set_id and only["state"] == "active"
    assert only["kcv"] == first.kcvs and only["key_ids"] == first.key_ids
    assert only["rotate_requested_at"] is None
    # Without a request, a charge does not ask to rotate.
    assert client.charge(amount=100, currency="USD", entry_mode="chip", card=CARD)
    assert client.key_store.current.key_set_id == first.key_set_id
    forced = admin.http.post(f"/admin/terminals/{terminal_id}/key-sets/rotate")
    assert forced.status_code == 200, forced.text
    assert forced.json()["key_set_id"] == first.key_set_id
    # The next charge's answer carries rotate_keys: the SDK rotates (auto_rotate).
    charge = client.charge(amount=200, currency="USD", entry_mode="chip", card=CARD)
    assert charge.status == "approved"
    _register(client)
    assert client.key_store.current.key_set_id != first.key_set_id
    listed = backend.cli("keys", "key-sets", terminal_id)["data"]
    states = {s["key_set_id"]: s for s in listed}
    new = client.key_store.current.key_set_id
    assert states[new]["state"] == "active" and states[new]["rotate_requested_at"] is None
    old = states[first.key_set_id]
    # The old set is ``previous`` until the grace ends (retires_at), then retires.
    assert old["state"] in ("previous", "retired") and old["retires_at"] is not None
    # The new set does not ask to rotate again.
    client.charge(amount=300, currency="USD", entry_mode="chip", card=CARD)
    assert client.key_store.current.key_set_id == new
    # The CLI forces one too; a terminal without an active set is 409.
    again = backend.cli("keys", "rotate-key-set", terminal_id)
    assert again["key_set_id"] == new
    problem(admin.http.post("/admin/terminals/T-NOPE/key-sets/rotate"), 404, "not_found")


def test_revocation_shows_what_it_killed(activated: Any, admin: Any, backend: Backend) -> None:
    client, terminal_id, device, _ = activated
    active = client.key_store.current.key_set_id
    # A pending set earned with the identity key (keys downloaded, never activated).
    client.attest()
    pending = client.download_keys()
    _register(client)
    spare = admin.http.post(
        f"/admin/devices/{device.device_id}/identity-keys", json={"key_id": "spare"}
    )
    SEEN_SECRETS.add(spare.json()["identity_secret"])
    answer = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/{device.key_id}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["device_id"] == device.device_id and body["key_id"] == device.key_id
    assert body["revoked_at"].endswith("Z") and body["tokens_refused"] is True
    assert body["pending_key_sets_retired"] == [pending.key_set_id]
    assert body["key_sets_still_serving"] == [active]
    assert body["live_identity_keys"] == ["spare"]
    states = {
        s["key_set_id"]: s["state"]
        for s in admin.http.get(f"/admin/terminals/{terminal_id}/key-sets").json()["data"]
    }
    assert states[pending.key_set_id] == "retired" and states[active] == "active"
    # The active set keeps serving charges until rotated.
    assert client.charge(amount=100, currency="USD", entry_mode="chip", card=CARD)
    # Revoking again kills nothing more; the CLI prints the same report.
    again = backend.cli("device", "revoke-key", device.device_id, device.key_id)
    assert again["pending_key_sets_retired"] == [] and again["live_identity_keys"] == ["spare"]
    assert orjson.dumps(again)  # one JSON document
