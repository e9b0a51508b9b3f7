"""Steps 5-6 (PROTOCOL §2.2, §2.3, §3.5, §3.6): attest, attestation tokens and key sets."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from support.attest_kit import attest, attest_headers, stamp
from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    ProvisionedDevice,
    Server,
    problem,
    signed_pos_headers,
)
from viopay.runtime import Runtime
from viopay_device import DeviceClient, MemoryKeyStore
from viopay_device.protocol.errors import KeyBlockError
from viopay_device.protocol.kcv import kcv_for
from viopay_device.protocol.keyblocks import KEY_TYPES, WRAPPED_BY, unwrap_key
from viopay_device.protocol.transport import derive_ktk, generate_x25519, x25519_shared

SIGNATURE_HEADERS = ["X-Key-Id", "X-Timestamp", "X-Nonce", "X-Signature"]


# --- helpers ----------------------------------------------------------------------------------


def token_of(http: httpx.Client, device: ProvisionedDevice) -> str:
    response = attest(http, device)
    assert response.status_code == 200, response.text
    token: str = response.json()["attestation_token"]
    SEEN_SECRETS.add(token)
    return token


def token_headers(device_id: str, token: str) -> dict[str, str]:
    return {"Authorization": f"Attestation {token}", "X-Device-Id": device_id}


def transport_pair() -> tuple[bytes, str]:
    private, public = generate_x25519()
    return private, base64.b64encode(public).decode()


def post_keys(http: httpx.Client, device_id: str, token: str, transport_key: str) -> httpx.Response:
    return http.post(
        "/pos/keys", headers=token_headers(device_id, token), json={"transport_key": transport_key}
    )


def open_keys(
    body: dict[str, Any], *, private: bytes, secret: bytes, device_id: str
) -> dict[str, bytes]:
    """The device side of §3.6; KeyBlockError when a block does not unwrap."""
    shared = x25519_shared(private, base64.b64decode(body["server_transport_key"]))
    wrapping = {
        "KTK": derive_ktk(
            shared=shared,
            identity_secret=secret,
            key_set_id=body["key_set_id"],
            device_id=device_id,
        )
    }
    for entry in body["keys"]:
        wrapping[entry["type"]] = unwrap_key(
            wrapping[entry["wrapped_by"]], entry["key_block"], expected_type=entry["type"]
        )
    keys = {t: wrapping[t] for t in KEY_TYPES}
    SEEN_SECRETS.update(k.hex() for k in keys.values())
    SEEN_SECRETS.update(base64.b64encode(k).decode() for k in keys.values())
    return keys


def claim(
    http: httpx.Client, admin: Admin, make_merchant: MakeMerchant, **merchant: Any
) -> ProvisionedDevice:
    device = admin.provision()
    code = http.post("/pos/pairing-code", headers=signed_pos_headers(device)).json()["pairing_code"]
    response = make_merchant(**merchant).http.post("/pos/claim", json={"pairing_code": code})
    assert response.status_code == 200, response.text
    return device


@pytest.fixture
def claimed(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> ProvisionedDevice:
    return claim(api, admin, make_merchant)


# --- attest: success and body -----------------------------------------------------------------


def test_attest_issues_a_token(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = attest(api, claimed)
    assert response.status_code == 200, response.text
    body = response.json()
    SEEN_SECRETS.add(body["attestation_token"])
    assert set(body) == {
        "attestation_token",
        "token_type",
        "expires_in",
        "expires_at",
        "device_status",
    }
    assert re.fullmatch(r"att_[A-Za-z0-9_-]{43}", body["attestation_token"])
    assert body["token_type"] == "Attestation" and body["expires_in"] == 300
    assert body["device_status"] == "claimed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(seconds=300) <= expires <= datetime.now(UTC) + timedelta(seconds=300)
    assert token_of(api, claimed) != body["attestation_token"]  # a fresh token each time


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"", None),
        (b"", "application/json"),
        (b"{}", "application/json"),
        (b'{"extra": 1}', "application/json"),
    ],
)
def test_attest_takes_no_body_or_an_object(
    api: httpx.Client, claimed: ProvisionedDevice, content: bytes, content_type: str | None
) -> None:
    headers = attest_headers(claimed) | ({"Content-Type": content_type} if content_type else {})
    assert api.post("/pos/attest", headers=headers, content=content).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"[]", "application/json", 400, "invalid_request"),
        (b"null", "application/json", 400, "invalid_request"),
        (b"{", "application/json", 400, "invalid_request"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"hello", None, 415, "unsupported_media_type"),
    ],
)
def test_attest_bad_bodies(
    api: httpx.Client,
    claimed: ProvisionedDevice,
    content: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    headers = attest_headers(claimed) | ({"Content-Type": content_type} if content_type else {})
    problem(api.post("/pos/attest", headers=headers, content=content), status, code)


# --- attest: headers and the check order (§1) -------------------------------------------------


@pytest.mark.parametrize("missing", SIGNATURE_HEADERS)
def test_missing_signature_header_is_named(
    api: httpx.Client, claimed: ProvisionedDevice, missing: Any
) -> None:
    headers = {k: v for k, v in attest_headers(claimed).items() if k != missing}
    body = problem(api.post("/pos/attest", headers=headers), 400, "missing_header")
    assert missing in body["detail"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Key-Id", "has space"),
        ("X-Key-Id", "k" * 129),
        ("X-Key-Id", ""),
        ("X-Timestamp", "2025-12-13 14:25:30Z"),
        ("X-Timestamp", "2025-12-13T14:25:30"),
        ("X-Timestamp", "1765635930"),
        ("X-Nonce", "short"),
        ("X-Nonce", "bad*nonce!"),
        ("X-Nonce", "n" * 129),
        ("X-Signature", "v1=abc="),
        ("X-Signature", "v2=" + "A" * 43 + "="),
        ("X-Signature", "v1=" + "A" * 44),
    ],
)
def test_malformed_signature_header_is_named(
    api: httpx.Client, claimed: ProvisionedDevice, name: str, value: Any
) -> None:
    headers = attest_headers(claimed) | {name: value}
    body = problem(api.post("/pos/attest", headers=headers), 400, "invalid_header")
    assert name in body["detail"]


def test_version_is_checked_after_the_headers_and_before_the_device(api: httpx.Client) -> None:
    old = "Viopay-POS/0.9.0 (Android 12; PAX-A920)"
    unknown = ProvisionedDevice(
        "POS-" + secrets.token_hex(4).upper(), "key-1", secrets.token_hex(32)
    )
    headers = {k: v for k, v in attest_headers(unknown, ua=old).items() if k != "X-Nonce"}
    problem(api.post("/pos/attest", headers=headers), 400, "missing_header")
    body = problem(attest(api, unknown, ua=old), 426, "app_version_unsupported")
    assert body["min_supported_version"] == "1.0.0"
    problem(attest(api, unknown), 404, "device_not_found")


def test_unknown_revoked_and_foreign_keys(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    stale = stamp(datetime.now(UTC) - timedelta(seconds=400))
    # The key is checked before the timestamp and the signature.
    problem(attest(api, claimed, key_id="no-such-key", timestamp=stale), 401, "unknown_key")
    other = admin.provision()
    problem(attest(api, claimed, key_id=other.key_id, secret=other.secret), 401, "unknown_key")
    added = admin.http.post(f"/admin/devices/{claimed.device_id}/identity-keys", json={})
    assert added.status_code == 201
    SEEN_SECRETS.add(added.json()["identity_secret"])
    revoked = admin.http.delete(
        f"/admin/devices/{claimed.device_id}/identity-keys/{claimed.key_id}"
    )
    assert revoked.status_code == 200, revoked.text
    problem(attest(api, claimed), 401, "key_revoked")
    problem(attest(api, claimed, timestamp=stale, secret=bytes(32)), 401, "key_revoked")
    new_key = added.json()
    fresh = attest(
        api, claimed, key_id=new_key["key_id"], secret=bytes.fromhex(new_key["identity_secret"])
    )
    assert fresh.status_code == 200


def test_wrong_secret(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    problem(attest(api, claimed, secret=secrets.token_bytes(32)), 401, "invalid_signature")
    # The timestamp is checked before the signature.
    stale = stamp(datetime.now(UTC) - timedelta(seconds=400))
    body = problem(
        attest(api, claimed, secret=secrets.token_bytes(32), timestamp=stale),
        401,
        "timestamp_out_of_window",
    )
    assert "server_time" in body


def test_signature_over_other_values_fails(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    headers = attest_headers(claimed)
    headers["X-Nonce"] = headers["X-Nonce"] + "x"  # signed with another nonce
    problem(api.post("/pos/attest", headers=headers), 401, "invalid_signature")


def test_disabled_device_cannot_attest(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/disable").status_code == 200
    problem(attest(api, claimed), 403, "device_disabled")
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/enable").status_code == 200
    assert attest(api, claimed).status_code == 200


def test_attest_needs_a_claimed_device(api: httpx.Client, admin: Admin) -> None:
    device = admin.provision()
    # The signature is checked before the status.
    problem(attest(api, device, secret=bytes(32)), 401, "invalid_signature")
    body = problem(attest(api, device), 409, "invalid_state")
    assert "inactive" in body["detail"]
    # Status before the body.
    headers = attest_headers(device) | {"Content-Type": "text/plain"}
    problem(api.post("/pos/attest", headers=headers, content=b"x"), 409, "invalid_state")


def test_released_device_cannot_attest(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/release").status_code == 200
    problem(attest(api, claimed), 409, "invalid_state")


# --- attest: timestamps and nonces ------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (-299.5, True),
        (-301, False),
        (-3600, False),
        (0, True),
        (59.5, True),
        (61, False),
        (3600, False),
    ],
)
def test_timestamp_window(
    api: httpx.Client, claimed: ProvisionedDevice, offset: float | int, ok: bool
) -> None:
    timestamp = stamp(datetime.now(UTC) + timedelta(seconds=offset))
    response = attest(api, claimed, timestamp=timestamp)
    if ok:
        assert response.status_code == 200, response.text
        return
    body = problem(response, 401, "timestamp_out_of_window")
    server_time = datetime.strptime(body["server_time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(server_time - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "form",
    [
        lambda now: now.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds"),
        lambda now: now.astimezone(timezone(timedelta(hours=-9, minutes=-30))).isoformat(),
        lambda now: now.strftime("%Y-%m-%dt%H:%M:%Sz"),
        lambda now: now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        lambda now: (
            (now - timedelta(seconds=250)).astimezone(timezone(timedelta(hours=2))).isoformat()
        ),
    ],
    ids=["plus-02", "minus-0930-fraction", "lower-case", "nanoseconds", "250s-past-plus-02"],
)
def test_timestamp_forms(api: httpx.Client, claimed: ProvisionedDevice, form: Any) -> None:
    timestamp = form(datetime.now(UTC))
    assert attest(api, claimed, timestamp=timestamp).status_code == 200, timestamp


def test_same_nonce_twice(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    headers = attest_headers(claimed)
    assert api.post("/pos/attest", headers=headers).status_code == 200
    problem(api.post("/pos/attest", headers=headers), 401, "nonce_reused")
    # A fresh timestamp does not make the nonce new again.
    problem(attest(api, claimed, nonce=headers["X-Nonce"]), 401, "nonce_reused")


def test_same_nonce_across_processes(
    claimed: ProvisionedDevice, server: Server, server_b: Server
) -> None:
    headers = attest_headers(claimed)
    assert httpx.post(f"{server.url}/pos/attest", headers=headers).status_code == 200
    problem(httpx.post(f"{server_b.url}/pos/attest", headers=headers), 401, "nonce_reused")


def test_failed_signature_does_not_spend_the_nonce(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    nonce = secrets.token_urlsafe(12)
    problem(attest(api, claimed, nonce=nonce, secret=bytes(32)), 401, "invalid_signature")
    assert attest(api, claimed, nonce=nonce).status_code == 200


def test_nonce_scope_is_the_device(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, claimed: ProvisionedDevice
) -> None:
    other = claim(api, admin, make_merchant)
    nonce = secrets.token_urlsafe(12)
    assert attest(api, claimed, nonce=nonce).status_code == 200
    assert attest(api, other, nonce=nonce).status_code == 200


# --- attestation tokens (§2.3) ----------------------------------------------------------------


def _keys_with(
    api: httpx.Client, headers: dict[str, str], transport_key: str | None = None
) -> httpx.Response:
    transport_key = transport_key or transport_pair()[1]
    return api.post("/pos/keys", headers=headers, json={"transport_key": transport_key})


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Attestation", "Attestation att_short", "Basic dXNlcjpwYXNz", "att_" + "A" * 43],
)
def test_missing_or_malformed_authorization(
    api: httpx.Client, claimed: ProvisionedDevice, authorization: Any
) -> None:
    headers = {"X-Device-Id": claimed.device_id} | (
        {"Authorization": authorization} if authorization is not None else {}
    )
    response = _keys_with(api, headers)
    problem(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Attestation")


def test_bearer_scheme_where_attestation_is_due(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    for value in (f"Bearer {token}", admin.http.headers["Authorization"]):
        response = _keys_with(api, {"Authorization": value, "X-Device-Id": claimed.device_id})
        problem(response, 401, "invalid_token")
        assert response.headers["www-authenticate"].startswith("Attestation")


def test_authorization_before_device_id(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    token = token_of(api, claimed)
    problem(_keys_with(api, {}), 401, "invalid_token")
    problem(_keys_with(api, {"Authorization": f"Attestation {token}"}), 400, "missing_header")
    bad = {"Authorization": f"Attestation {token}", "X-Device-Id": "pos-1"}
    problem(_keys_with(api, bad), 400, "invalid_header")
    unknown = token_headers("POS-" + secrets.token_hex(4).upper(), token)
    problem(_keys_with(api, unknown), 404, "device_not_found")


def test_scheme_is_case_insensitive_and_client_headers_are_not_checked(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    headers = {
        "Authorization": f"attestation {token}",
        "X-Device-Id": claimed.device_id,
        "User-Agent": "curl/8",
        "X-Client-Type": "web",
    }
    assert _keys_with(api, headers).status_code == 200


def test_token_of_device_a_used_by_device_b(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, claimed: ProvisionedDevice
) -> None:
    other = claim(api, admin, make_merchant)
    token = token_of(api, claimed)
    response = _keys_with(api, token_headers(other.device_id, token))
    problem(response, 401, "invalid_token")
    assert _keys_with(api, token_headers(claimed.device_id, token)).status_code == 200


def test_token_serves_many_calls_and_every_process(
    claimed: ProvisionedDevice, server: Server, server_b: Server
) -> None:
    with httpx.Client(base_url=server.url) as http:
        token = token_of(http, claimed)
    ids = set()
    for url in (server.url, server_b.url, server.url):
        response = httpx.post(
            f"{url}/pos/keys",
            headers=token_headers(claimed.device_id, token),
            json={"transport_key": transport_pair()[1]},
        )
        assert response.status_code == 200, response.text
        ids.add(response.json()["key_set_id"])
    assert len(ids) == 3  # every call makes a new key set


def test_disable_kills_the_token_and_enable_does_not_revive_it(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    assert _keys_with(api, token_headers(claimed.device_id, token)).status_code == 200
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/disable").status_code == 200
    problem(_keys_with(api, token_headers(claimed.device_id, token)), 403, "device_disabled")
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/enable").status_code == 200
    problem(_keys_with(api, token_headers(claimed.device_id, token)), 401, "invalid_token")
    assert (
        _keys_with(api, token_headers(claimed.device_id, token_of(api, claimed))).status_code == 200
    )


def test_revoking_the_key_kills_its_token(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    revoked = admin.http.delete(
        f"/admin/devices/{claimed.device_id}/identity-keys/{claimed.key_id}"
    )
    assert revoked.status_code == 200
    problem(_keys_with(api, token_headers(claimed.device_id, token)), 401, "invalid_token")


def test_release_kills_the_token(
    api: httpx.Client, admin: Admin, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    assert admin.http.post(f"/admin/devices/{claimed.device_id}/release").status_code == 200
    problem(_keys_with(api, token_headers(claimed.device_id, token)), 401, "invalid_token")


def test_unknown_token(api: httpx.Client, claimed: ProvisionedDevice) -> None:
    fake = "att_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    problem(_keys_with(api, token_headers(claimed.device_id, fake)), 401, "invalid_token")


# --- keys (§3.6) ------------------------------------------------------------------------------


def test_keys_unwrap_with_the_private_key_and_the_identity_secret(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    private, public = transport_pair()
    response = post_keys(api, claimed.device_id, token, public)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["key_set_id", "server_transport_key", "created_at", "expires_at", "keys"]
    assert re.fullmatch(r"ks_[a-z0-9]+", body["key_set_id"])
    assert len(base64.b64decode(body["server_transport_key"], validate=True)) == 32
    created = datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ") - created == timedelta(
        minutes=15
    )
    assert [k["type"] for k in body["keys"]] == list(KEY_TYPES)
    for entry in body["keys"]:
        assert list(entry) == ["type", "key_id", "wrapped_by", "key_block", "kcv"]
        assert entry["wrapped_by"] == WRAPPED_BY[entry["type"]]
        assert re.fullmatch(r"[\x21-\x7E]{1,128}", entry["key_id"]) and re.fullmatch(
            r"[0-9A-F]{6}", entry["kcv"]
        )
        assert entry["key_block"].startswith("D")
    keys = open_keys(body, private=private, secret=claimed.secret, device_id=claimed.device_id)
    for entry in body["keys"]:
        assert kcv_for(entry["type"], keys[entry["type"]]) == entry["kcv"]
    assert len(set(keys.values())) == 6


def test_a_wrong_secret_or_private_key_cannot_unwrap_the_tmk(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    private, public = transport_pair()
    body = post_keys(api, claimed.device_id, token, public).json()
    with pytest.raises(KeyBlockError):
        open_keys(
            body, private=private, secret=secrets.token_bytes(32), device_id=claimed.device_id
        )
    with pytest.raises(KeyBlockError):
        open_keys(
            body, private=generate_x25519()[0], secret=claimed.secret, device_id=claimed.device_id
        )
    with pytest.raises(KeyBlockError):
        open_keys(body, private=private, secret=claimed.secret, device_id="POS-00000000")


def test_every_call_makes_a_new_set_with_unique_key_ids(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    token = token_of(api, claimed)
    bodies = [
        post_keys(api, claimed.device_id, token, transport_pair()[1]).json() for _ in range(3)
    ]
    assert len({b["key_set_id"] for b in bodies}) == 3
    assert len({b["server_transport_key"] for b in bodies}) == 3
    key_ids = [k["key_id"] for b in bodies for k in b["keys"]]
    assert len(set(key_ids)) == 18


def test_keys_with_the_sdk(claimed: ProvisionedDevice, server: Server) -> None:
    store = MemoryKeyStore.from_hex(claimed.key_id, claimed.identity_secret)
    with DeviceClient(server.url, device_id=claimed.device_id, key_store=store) as client:
        key_set = client.download_keys()  # attests first
    assert re.fullmatch(r"ks_[a-z0-9]+", key_set.key_set_id)
    for key_type in KEY_TYPES:
        assert kcv_for(key_type, key_set.key(key_type)) == key_set.kcvs[key_type]
        SEEN_SECRETS.add(key_set.key(key_type).hex())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "required"),
        ({"transport_key": None}, "required"),
        ({"transport_key": 42}, "string"),
        ({"transport_key": "not base64!"}, "base64"),
        ({"transport_key": base64.b64encode(bytes(32)).decode().rstrip("=")}, "base64"),
        ({"transport_key": base64.b64encode(secrets.token_bytes(31)).decode()}, "32 bytes"),
        ({"transport_key": base64.b64encode(secrets.token_bytes(33)).decode()}, "32 bytes"),
        ({"transport_key": base64.b64encode(bytes(32)).decode()}, "X25519"),  # a low-order point
    ],
)
def test_bad_transport_keys(
    api: httpx.Client, claimed: ProvisionedDevice, body: dict[str, Any], message: str
) -> None:
    token = token_of(api, claimed)
    response = api.post("/pos/keys", headers=token_headers(claimed.device_id, token), json=body)
    problem_body = problem(response, 400, "invalid_request")
    assert problem_body["errors"][0]["field"] == "transport_key"
    assert message in problem_body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", None, 415, "unsupported_media_type"),
        (b'{"transport_key": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b"[]", "application/json", 400, "invalid_request"),
        (b"{", "application/json", 400, "invalid_request"),
    ],
)
def test_keys_body_must_be_a_json_object(
    api: httpx.Client,
    claimed: ProvisionedDevice,
    content: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    headers = token_headers(claimed.device_id, token_of(api, claimed))
    if content_type:
        headers["Content-Type"] = content_type
    problem(api.post("/pos/keys", headers=headers, content=content), status, code)


def test_keys_checks_the_token_before_the_body(
    api: httpx.Client, claimed: ProvisionedDevice
) -> None:
    response = api.post("/pos/keys", headers={"X-Device-Id": claimed.device_id}, content=b"x")
    problem(response, 401, "invalid_token")


# --- exact window edges, over HTTP with a fixed server clock -----------------------------------


# app.py's default ORJSONResponse warns in-process (the servers run with default filters).
@pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")
@pytest.mark.parametrize(
    ("offset", "status"),
    [(-300, 200), (-300.000001, 401), (-301, 401), (60, 200), (60.000001, 401), (61, 401)],
)
async def test_window_edges_with_a_fixed_server_clock(
    runtime: Runtime, claimed: ProvisionedDevice, offset: float | int, status: int
) -> None:
    """An in-process app on the backend's database and master key, its clock fixed."""
    from viopay.app import create_app
    from viopay.deps import get_now

    fixed = datetime.now(UTC).replace(microsecond=0)
    app = create_app(runtime.settings)
    app.dependency_overrides[get_now] = lambda: fixed
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://viopay.test") as client,
    ):
        timestamp = stamp(fixed + timedelta(seconds=offset))
        response = await client.post(
            "/pos/attest", headers=attest_headers(claimed, timestamp=timestamp)
        )
    if status == 200:
        assert response.status_code == 200, response.text
        SEEN_SECRETS.add(response.json()["attestation_token"])
        return
    body = problem(response, 401, "timestamp_out_of_window")
    assert body["server_time"] == fixed.strftime("%Y-%m-%dT%H:%M:%SZ")
