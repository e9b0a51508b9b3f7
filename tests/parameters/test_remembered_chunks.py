"""Terminal-parameters chunks on PostgreSQL are answered on the token context their process
remembered from the token's last fresh read (the config or a chunk), in one statement that
counts the envelope only if every row that decided the answer still reads the same (issue 10:
activation time). What must hold, with the change made through another server process: a
disable, a revoked identity key, a new key set and a new document act on the very next chunk;
each chunk counts exactly one envelope; a refused or bad request counts none. On the embedded
default nothing is remembered and the same answers come from a fresh read."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MakeMerchant,
    ProvisionedDevice,
    Server,
    claim_with,
    present,
    problem,
    sdk_client,
)
from viopay.keysets.models import KeySet
from viopay.runtime import Runtime
from viopay_device import DeviceClient
from viopay_device.protocol.envelope import chunk_aad, open_envelope, parse_envelope, response_aad

PATH = "/pos/terminal-parameters"
TERMINALS: dict[str, str] = {}  # device id → terminal id, of the devices ``keyed`` claimed


@pytest.fixture(scope="module")
def other(
    backend: Backend, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """On PostgreSQL a second server process: the device downloads here, the admin works
    through the first. The embedded default is one process (its cache holds the tokens)."""
    if backend.name != "postgres":
        yield server
        return
    second = Server(backend, tmp_path_factory.mktemp(f"chunks-{backend.name}"), "chunks")
    yield second
    second.stop()


@pytest.fixture
def keyed(
    server: Server, admin: Admin, make_merchant: MakeMerchant
) -> Iterator[tuple[DeviceClient, ProvisionedDevice, dict[str, str]]]:
    """A claimed device with a pending key set, and its token's headers."""
    device = admin.provision()
    client = sdk_client(server.url, device)
    terminal_id = claim_with(client, make_merchant())
    client.download_keys()
    for key_type in present(client.key_store.pending).key_ids:
        SEEN_SECRETS.add(present(client.key_store.pending).key(key_type).hex())
    token = client.attest().token
    SEEN_SECRETS.add(token)
    TERMINALS[device.device_id] = terminal_id
    yield client, device, {"Authorization": f"Attestation {token}", "X-Device-Id": device.device_id}
    client.close()


def lookups(url: str) -> dict[str, float]:
    found = dict.fromkeys(("remembered", "read", "changed"), 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "viopay_token_lookups_total":
                found[sample.labels["source"]] = sample.value
    return found


def spent(url: str, before: dict[str, float]) -> dict[str, float]:
    after = lookups(url)
    return {source: after[source] - before[source] for source in after}


async def envelope_count(runtime: Runtime, key_set_id: str) -> int:
    async with runtime.sessions() as db:
        return present(await db.get(KeySet, key_set_id)).envelope_count


def fetch(url: str, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{PATH}", headers=headers, json=body)


def opened(client: DeviceClient, answer: dict[str, Any], msk: bytes) -> bytes:
    meta = answer["chunk"]
    base = response_aad(method="POST", path=PATH, subject=client.device_id, nonce="")
    aad = chunk_aad(base, index=meta["index"], count=meta["count"], sha256_hex=meta["sha256"])
    return open_envelope(msk, parse_envelope(answer), aad)


async def test_the_next_chunks_of_a_token_are_answered_on_its_remembered_context(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]],
    other: Server,
    server: Server,
    backend: Backend,
    runtime: Runtime,
) -> None:
    client, _, headers = keyed
    pending = present(client.key_store.pending)
    assert httpx.post(f"{other.url}/pos/config", headers=headers).status_code == 200
    counted = await envelope_count(runtime, pending.key_set_id)
    before = lookups(other.url)
    answers = [fetch(other.url, headers, {"chunk": index}) for index in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    if backend.name == "postgres":  # the config's fresh read serves every chunk
        assert spent(other.url, before) == {"remembered": 3, "read": 0, "changed": 0}
    else:
        assert spent(other.url, before) == {"remembered": 0, "read": 0, "changed": 0}
    assert await envelope_count(runtime, pending.key_set_id) == counted + 3
    # The same bytes as a fresh read's (the first server never saw this token's chunks).
    for index, answer in enumerate(answers):
        fresh = fetch(server.url, headers, {"chunk": index})
        assert answer.json()["chunk"] == fresh.json()["chunk"]
        assert answer.headers["etag"] == fresh.headers["etag"]
        assert opened(client, answer.json(), pending.key("MSK")) == opened(
            client, fresh.json(), pending.key("MSK")
        )
        assert answer.json()["kid"] == pending.msk_kid


async def test_a_disable_made_elsewhere_acts_on_the_next_chunk_and_counts_nothing(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]],
    other: Server,
    admin: Admin,
    runtime: Runtime,
) -> None:
    client, device, headers = keyed
    key_set_id = present(client.key_store.pending).key_set_id
    assert fetch(other.url, headers, {"chunk": 0}).status_code == 200
    counted = await envelope_count(runtime, key_set_id)
    assert admin.http.post(f"/admin/devices/{device.device_id}/disable").status_code == 200
    problem(fetch(other.url, headers, {"chunk": 1}), 403, "device_disabled")
    assert admin.http.post(f"/admin/devices/{device.device_id}/enable").status_code == 200
    problem(fetch(other.url, headers, {"chunk": 1}), 401, "invalid_token")  # generation bumped
    assert await envelope_count(runtime, key_set_id) == counted


async def test_a_revoked_identity_key_or_a_lost_token_record_is_401_on_the_next_chunk(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]],
    other: Server,
    admin: Admin,
    runtime: Runtime,
    backend: Backend,
) -> None:
    client, device, headers = keyed
    key_set_id = present(client.key_store.pending).key_set_id
    assert fetch(other.url, headers, {"chunk": 0}).status_code == 200
    if backend.name == "postgres":  # Redis, shared (the embedded cache is the server's own)
        # The cache lost the token's record (a flush, an eviction): the token is gone.
        token = headers["Authorization"].removeprefix("Attestation ")
        await runtime.cache.delete(f"att:{hashlib.sha256(token.encode()).hexdigest()}")
        problem(fetch(other.url, headers, {"chunk": 1}), 401, "invalid_token")
    # A fresh token, remembered, then its identity key revoked.
    token = client.attest().token
    SEEN_SECRETS.add(token)
    headers = headers | {"Authorization": f"Attestation {token}"}
    assert fetch(other.url, headers, {"chunk": 0}).status_code == 200
    counted = await envelope_count(runtime, key_set_id)
    revoked = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/{device.key_id}")
    assert revoked.status_code == 200
    problem(fetch(other.url, headers, {"chunk": 1}), 401, "invalid_token")
    assert await envelope_count(runtime, key_set_id) == counted


def test_a_new_key_set_is_the_default_choice_of_the_next_chunk(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]], other: Server
) -> None:
    client, _, headers = keyed
    first = present(client.key_store.pending)
    assert fetch(other.url, headers, {"chunk": 0}).json()["kid"] == first.msk_kid
    second = client.download_keys()  # a newer pending set: the default from now on
    for key_type in second.key_ids:
        SEEN_SECRETS.add(second.key(key_type).hex())
    answer = fetch(other.url, headers, {"chunk": 1})
    assert answer.status_code == 200 and answer.json()["kid"] == second.msk_kid
    assert opened(client, answer.json(), second.key("MSK"))
    # The first set named explicitly is still usable and answered under its own MSK.
    named = fetch(other.url, headers, {"chunk": 1, "key_set_id": first.key_set_id})
    assert named.json()["kid"] == first.msk_kid


async def test_a_new_document_is_served_from_the_next_chunk(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]],
    other: Server,
    admin: Admin,
    runtime: Runtime,
) -> None:
    client, device, headers = keyed
    key_set_id = present(client.key_store.pending).key_set_id
    old = fetch(other.url, headers, {"chunk": 0}).json()["chunk"]
    terminal_id = TERMINALS[device.device_id]
    uploaded = admin.http.put(
        f"/admin/terminals/{terminal_id}/parameters", json={"version": "remembered-test", "x": 1}
    )
    assert uploaded.status_code == 200
    counted = await envelope_count(runtime, key_set_id)
    answer = fetch(other.url, headers, {"chunk": 0})
    assert answer.status_code == 200
    meta = answer.json()["chunk"]
    assert meta["sha256"] == uploaded.json()["sha256"] != old["sha256"]
    assert meta["count"] == 1 and answer.headers["etag"] == f'"{meta["sha256"]}"'
    assert opened(client, answer.json(), present(client.key_store.pending).key("MSK"))
    # The old document's later chunks are out of range now: 400, nothing counted for it.
    problem(fetch(other.url, headers, {"chunk": 2}), 400, "invalid_request")
    assert await envelope_count(runtime, key_set_id) == counted + 1


async def test_bad_requests_on_a_remembered_token_are_decided_afresh_and_count_nothing(
    keyed: tuple[DeviceClient, ProvisionedDevice, dict[str, str]],
    other: Server,
    runtime: Runtime,
) -> None:
    client, _, headers = keyed
    key_set_id = present(client.key_store.pending).key_set_id
    first = fetch(other.url, headers, {"chunk": 0})
    count = first.json()["chunk"]["count"]
    counted = await envelope_count(runtime, key_set_id)
    problem(fetch(other.url, headers, {"chunk": count}), 400, "invalid_request")
    problem(fetch(other.url, headers, {"chunk": -1}), 400, "invalid_request")
    problem(fetch(other.url, headers, {"chunk": 1, "key_set_id": "ks_unknown"}), 404, "not_found")
    # A device id no test provisions (a fixed one may be: the schema fuzzing provisions ids).
    wrong_device = headers | {"X-Device-Id": f"POS-{secrets.token_hex(4).upper()}"}
    problem(fetch(other.url, wrong_device, {"chunk": 1}), 404, "device_not_found")
    cached = httpx.post(
        f"{other.url}{PATH}",
        headers=headers | {"If-None-Match": first.headers["etag"]},
        json={"chunk": 1},
    )
    assert cached.status_code == 304
    assert await envelope_count(runtime, key_set_id) == counted
    assert fetch(other.url, headers, {"chunk": 1}).status_code == 200
    assert await envelope_count(runtime, key_set_id) == counted + 1
