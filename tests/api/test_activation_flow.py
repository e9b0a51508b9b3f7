"""Steps 7a, 7b and 8 (PROTOCOL §3.8–§3.10) and the whole activation through the SDK."""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterator
from datetime import timedelta

import httpx
import orjson
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    Server,
    claim_with,
    present,
    problem,
    sdk_client,
)
from viopay.runtime import Runtime
from viopay_device import (
    DeviceClient,
    InvalidState,
    KeySet,
    PairingCode,
    StepReport,
    activate_device,
)
from viopay_device.protocol.envelope import (
    chunk_aad,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)


def register(client: DeviceClient) -> None:
    for key_set in (client.key_store.current, client.key_store.pending, client.key_store.previous):
        if key_set is not None:
            for key_type in key_set.key_ids:
                SEEN_SECRETS.add(key_set.key(key_type).hex())


def token_headers(client: DeviceClient) -> dict[str, str]:
    token = client.attest().token
    SEEN_SECRETS.add(token)
    return {"Authorization": f"Attestation {token}", "X-Device-Id": client.device_id}


@pytest.fixture
def claimed(
    server: Server, admin: Admin, make_merchant: MakeMerchant
) -> Iterator[tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice]]:
    owner = make_merchant()
    device = admin.provision()
    client = sdk_client(server.url, device)
    terminal_id = claim_with(client, owner, label="Front counter")
    yield client, owner, terminal_id, device
    client.close()


def test_whole_activation_through_the_sdk(
    server: Server, admin: Admin, make_merchant: MakeMerchant, api: httpx.Client
) -> None:
    owner = make_merchant(name="Corner Coffee", currency="USD")
    device = admin.provision()
    steps: list[str] = []
    with sdk_client(server.url, device) as client:

        def on_step(report: StepReport) -> None:
            steps.append(report.name)
            if report.name == "pairing_code":
                assert isinstance(report.result, PairingCode)
                code = report.result.pairing_code
                assert owner.http.post("/pos/claim", json={"pairing_code": code}).status_code == 200

        result = activate_device(client, on_step=on_step, sleep=lambda _: None)
        register(client)
        assert steps == [
            "bootstrap",
            "pairing_code",
            "wait_until_claimed",
            "attest",
            "keys",
            "config",
            "terminal_parameters",
            "activate",
        ]
        assert result.activation.status == "activated"
        assert result.activation.merchant_id == owner.merchant_id
        assert result.terminal_parameters.chunk_count >= 3
        assert result.config.hmac_key_id == present(client.key_store.current).hmac_key_id
        view = owner.http.get(f"/merchant/devices/{device.device_id}").json()
        assert view["status"] == "activated" and view["activated_at"] is not None
        assert client.status().status == "activated"
        events = [
            e["type"]
            for e in owner.http.get("/merchant/events", params={"limit": 100}).json()["data"]
        ]
        assert {
            "device.claimed",
            "device.attested",
            "key_set.created",
            "key_set.activated",
            "device.activated",
        } <= set(events)


def test_config_envelope_etag_and_version_bump(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice],
) -> None:
    client, owner, terminal_id, _ = claimed
    client.download_keys()
    register(client)
    headers = token_headers(client)
    first = httpx.post(f"{client_base(client)}/pos/config", headers=headers, json={})
    assert first.status_code == 200
    etag = first.headers["etag"]
    envelope = parse_envelope(first.json())
    pending = present(client.key_store.pending)
    assert envelope.kid == pending.msk_kid
    aad = response_aad(method="POST", path="/pos/config", subject=client.device_id, nonce="")
    document = orjson.loads(open_envelope(pending.key("MSK"), envelope, aad))
    assert document["terminal"]["terminal_id"] == terminal_id
    assert document["terminal"]["label"] == "Front counter"
    assert document["security"]["hmac_key_id"] == pending.hmac_key_id
    version = document["config_version"]
    same = httpx.post(
        f"{client_base(client)}/pos/config", headers=headers | {"If-None-Match": etag}
    )
    assert same.status_code == 304 and same.headers["etag"] == etag and same.content == b""
    # The merchant edits the config: the version grows, the tag changes, the next fetch returns it.
    edited = owner.http.put(
        "/merchant/config", json={"tax": {"enabled": True, "rate_bps": 825, "inclusive": False}}
    )
    assert edited.status_code == 200 and edited.json()["config_version"] == version + 1
    fresh = httpx.post(
        f"{client_base(client)}/pos/config", headers=headers | {"If-None-Match": etag}
    )
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    document = orjson.loads(open_envelope(pending.key("MSK"), parse_envelope(fresh.json()), aad))
    assert document["config_version"] == version + 1
    assert document["merchant"]["tax"] == {"enabled": True, "rate_bps": 825, "inclusive": False}
    # Through the SDK: the cached version is returned on 304.
    assert client.fetch_config().config_version == version + 1
    assert client.fetch_config().config_version == version + 1


def client_base(client: DeviceClient) -> str:
    return str(client._http.base_url).rstrip("/")


def test_config_key_set_choice(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice],
) -> None:
    client, *_ = claimed
    headers = token_headers(client)
    base = client_base(client)
    problem(
        httpx.post(f"{base}/pos/config", headers=headers), 409, "invalid_state"
    )  # no key set yet
    client.download_keys()
    problem(
        httpx.post(f"{base}/pos/config", headers=headers, json={"key_set_id": "ks_unknown"}),
        404,
        "not_found",
    )
    ks = present(client.key_store.pending).key_set_id
    assert (
        httpx.post(f"{base}/pos/config", headers=headers, json={"key_set_id": ks}).status_code
        == 200
    )
    problem(
        httpx.post(
            f"{base}/pos/config",
            headers=headers,
            content=b"{",
        ),
        415,
        "unsupported_media_type",
    )


def test_terminal_parameters_chunks(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice],
) -> None:
    client, *_ = claimed
    client.download_keys()
    register(client)
    headers = token_headers(client)
    base = client_base(client)
    pending = present(client.key_store.pending)
    first = httpx.post(f"{base}/pos/terminal-parameters", headers=headers, json={"chunk": 0})
    assert first.status_code == 200
    meta = first.json()["chunk"]
    assert first.headers["etag"] == f'"{meta["sha256"]}"'
    assert meta["count"] == -(-meta["size"] // 32768) and meta["count"] >= 3
    stream = b""
    for index in range(meta["count"]):
        answer = httpx.post(
            f"{base}/pos/terminal-parameters", headers=headers, json={"chunk": index}
        ).json()
        assert answer["chunk"] == {**meta, "index": index}
        aad = chunk_aad(
            response_aad(
                method="POST", path="/pos/terminal-parameters", subject=client.device_id, nonce=""
            ),
            index=index,
            count=meta["count"],
            sha256_hex=meta["sha256"],
        )
        part = open_envelope(pending.key("MSK"), parse_envelope(answer), aad)
        assert len(part) == (32768 if index < meta["count"] - 1 else meta["size"] - 32768 * index)
        stream += part
    assert hashlib.sha256(stream).hexdigest() == meta["sha256"] and len(stream) == meta["size"]
    assert isinstance(orjson.loads(gzip.decompress(stream)), dict)
    # 304 is decided before the chunk index; a wrong index is 400.
    cached = httpx.post(
        f"{base}/pos/terminal-parameters",
        headers=headers | {"If-None-Match": first.headers["etag"]},
        json={"chunk": 999},
    )
    assert cached.status_code == 304
    problem(
        httpx.post(
            f"{base}/pos/terminal-parameters", headers=headers, json={"chunk": meta["count"]}
        ),
        400,
        "invalid_request",
    )
    for bad in ({}, {"chunk": -1}, {"chunk": "0"}, {"chunk": True}):
        problem(
            httpx.post(f"{base}/pos/terminal-parameters", headers=headers, json=bad),
            400,
            "invalid_request",
        )
    # A wrong AAD (chunk 1 opened as chunk 0) does not authenticate.
    answer = httpx.post(
        f"{base}/pos/terminal-parameters", headers=headers, json={"chunk": 1}
    ).json()
    wrong = chunk_aad(
        response_aad(
            method="POST", path="/pos/terminal-parameters", subject=client.device_id, nonce=""
        ),
        index=0,
        count=meta["count"],
        sha256_hex=meta["sha256"],
    )
    with pytest.raises(Exception):
        open_envelope(pending.key("MSK"), parse_envelope(answer), wrong)


def activation_envelope(
    client: DeviceClient,
    *,
    kcv: dict[str, str] | None = None,
    key_set: KeySet | None = None,
    kid: str | None = None,
) -> dict[str, object]:
    ks = key_set or present(client.key_store.pending)
    body = {
        "key_set_id": ks.key_set_id,
        "kcv": kcv or dict(ks.kcvs),
        "config_version": 1,
        "app_version": "1.4.2",
    }
    aad = request_aad(method="POST", path="/pos/activate", subject=client.device_id)
    return seal(ks.key("MSK"), kid or ks.msk_kid, orjson.dumps(body), aad)


def test_activation_wrong_kcv_changes_nothing(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice],
) -> None:
    client, owner, *_ = claimed
    client.download_keys()
    register(client)
    headers = token_headers(client)
    base = client_base(client)
    kcv = dict(present(client.key_store.pending).kcvs)
    kcv["TPK"] = "000000" if kcv["TPK"] != "000000" else "111111"
    problem(
        httpx.post(
            f"{base}/pos/activate", headers=headers, json=activation_envelope(client, kcv=kcv)
        ),
        422,
        "key_check_failed",
    )
    assert owner.http.get(f"/merchant/devices/{client.device_id}").json()["status"] == "claimed"
    # Right KCVs now: activated; the same activation again answers the same.
    envelope = activation_envelope(client)
    first = httpx.post(f"{base}/pos/activate", headers=headers, json=envelope)
    again = httpx.post(f"{base}/pos/activate", headers=headers, json=activation_envelope(client))
    assert first.status_code == again.status_code == 200
    ks = present(client.key_store.pending)
    aad = response_aad(method="POST", path="/pos/activate", subject=client.device_id, nonce="")
    one, two = (
        orjson.loads(open_envelope(ks.key("MSK"), parse_envelope(r.json()), aad))
        for r in (first, again)
    )
    assert one == two and one["status"] == "activated" and one["hmac_key_id"] == ks.hmac_key_id


def test_activation_envelope_errors(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice],
) -> None:
    client, *_ = claimed
    client.download_keys()
    register(client)
    headers = token_headers(client)
    base = client_base(client)
    env = activation_envelope(client)
    problem(
        httpx.post(
            f"{base}/pos/activate", headers=headers, json={"v": 2, "kid": "x", "iv": "", "ct": ""}
        ),
        400,
        "invalid_request",
    )
    problem(
        httpx.post(f"{base}/pos/activate", headers=headers, json=env | {"kid": "msk_unknown"}),
        400,
        "decryption_failed",
    )
    tampered = env | {"ct": base64.b64encode(b"\0" * 40).decode()}
    problem(
        httpx.post(f"{base}/pos/activate", headers=headers, json=tampered), 400, "decryption_failed"
    )
    # Sealed for another endpoint: the AAD does not match.
    ks = present(client.key_store.pending)
    other = seal(
        ks.key("MSK"),
        ks.msk_kid,
        b"{}",
        request_aad(method="POST", path="/pos/config", subject=client.device_id),
    )
    problem(
        httpx.post(f"{base}/pos/activate", headers=headers, json=other), 400, "decryption_failed"
    )
    problem(
        httpx.post(f"{base}/pos/activate", headers=headers, content=b"x"),
        415,
        "unsupported_media_type",
    )


def test_activation_before_claim_is_409(server: Server, admin: Admin) -> None:
    """An unclaimed device cannot attest, so it can get no token, key set or activation."""
    with sdk_client(server.url, admin.provision()) as client:
        with pytest.raises(InvalidState):
            client.download_keys()  # attests first: 409 invalid_state


async def test_activate_service_refuses_an_unclaimed_device(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice], runtime: Runtime
) -> None:
    """A device released after downloading keys (back to inactive) cannot activate them."""
    from viopay.activation import delivery
    from viopay.devices.models import Device, DeviceStatus

    client, *_ = claimed
    client.download_keys()
    register(client)
    async with runtime.sessions() as db, db.begin():
        device = present(await db.get(Device, client.device_id))
        device.status, device.terminal_id = DeviceStatus.inactive, None
        opened = await delivery.open_activation(
            db, runtime.wrapper, device=device, raw=activation_envelope(client)
        )
        with pytest.raises(Exception) as refused:
            await delivery.activate(
                db,
                runtime.wrapper,
                device=device,
                opened=opened,
                grace=timedelta(0),
                now=__import__("viopay.ids").ids.utcnow(),
            )
        assert getattr(refused.value, "code", None) == "invalid_state"
        await db.rollback()


async def test_expired_key_set_is_refused(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice], runtime: Runtime
) -> None:
    from viopay.keysets.models import KeySet

    client, owner, *_ = claimed
    client.download_keys()
    register(client)
    ks = present(client.key_store.pending)
    async with runtime.sessions() as db, db.begin():  # the set was made 16 minutes ago
        row = present(await db.get(KeySet, ks.key_set_id))
        row.created_at -= timedelta(minutes=16)
        row.expires_at -= timedelta(minutes=16)
    headers = token_headers(client)
    problem(
        httpx.post(
            f"{client_base(client)}/pos/activate", headers=headers, json=activation_envelope(client)
        ),
        409,
        "invalid_state",
    )
    problem(
        httpx.post(
            f"{client_base(client)}/pos/config", headers=headers, json={"key_set_id": ks.key_set_id}
        ),
        404,
        "not_found",
    )
    assert owner.http.get(f"/merchant/devices/{client.device_id}").json()["status"] == "claimed"


async def test_rotation_keeps_previous_set_for_the_grace(
    claimed: tuple[DeviceClient, MerchantCtx, str, ProvisionedDevice], runtime: Runtime
) -> None:
    """An activated device rotates: the old set stays usable for the grace, then retires."""
    from viopay.activation import delivery
    from viopay.devices.models import Device
    from viopay.ids import utcnow

    client, *_ = claimed
    client.download_keys()
    client.fetch_config()
    client.activate()
    old = present(client.key_store.current)
    client.rotate_keys()
    register(client)
    new = present(client.key_store.current)
    assert (
        new.key_set_id != old.key_set_id
        and present(client.key_store.previous).key_set_id == old.key_set_id
    )
    headers = token_headers(client)
    base = client_base(client)
    assert (
        httpx.post(
            f"{base}/pos/config", headers=headers, json={"key_set_id": old.key_set_id}
        ).status_code
        == 200
    )
    superseded = activation_envelope(client, key_set=old)
    problem(
        httpx.post(f"{base}/pos/activate", headers=headers, json=superseded), 409, "invalid_state"
    )
    grace = timedelta(seconds=runtime.settings.rotation_grace_seconds)
    async with runtime.sessions() as db, db.begin():
        device = present(await db.get(Device, client.device_id))
        now = utcnow()
        assert (
            await delivery.resolve_key_set(db, device=device, key_set_id=old.key_set_id, now=now)
        ).key_set_id == old.key_set_id
        with pytest.raises(Exception) as gone:
            await delivery.resolve_key_set(
                db, device=device, key_set_id=old.key_set_id, now=now + grace + timedelta(seconds=1)
            )
        assert getattr(gone.value, "code", "") == "not_found"


def test_schema_is_published(api: httpx.Client) -> None:
    schema = api.get("/pos/config/schema").json()
    assert schema["type"] == "object" and "config_version" in schema["required"]
