"""Signed pairing (PROTOCOL §2.1 v1.1): pairing-code and status carry the §2.2 signature, so
knowing a device id (printed on its box) is not enough to fetch its code, kill it, or read whom
the device belongs to. ``VIOPAY_PAIRING_SIGNATURE=off`` keeps the original flow."""

from __future__ import annotations

import secrets

import httpx
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    ProvisionedDevice,
    Server,
    pos_headers,
    problem,
    signed_pos_headers,
)
from viopay.runtime import Runtime

ENDPOINTS = [("POST", "/pos/pairing-code"), ("GET", "/pos/status")]


@pytest.fixture
def device(admin: Admin) -> ProvisionedDevice:
    provisioned: ProvisionedDevice = admin.provision()
    return provisioned


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_knowing_the_device_id_is_not_enough(
    api: httpx.Client, device: ProvisionedDevice, method: str, path: str
) -> None:
    body = problem(
        api.request(method, path, headers=pos_headers(device.device_id)), 400, "missing_header"
    )
    assert "X-Key-Id" in body["detail"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_wrong_secret_or_key_is_401(
    api: httpx.Client, admin: Admin, device: ProvisionedDevice, method: str, path: str
) -> None:
    forged = signed_pos_headers(device, secret=secrets.token_bytes(32))
    problem(api.request(method, path, headers=forged), 401, "invalid_signature")
    other = admin.provision()
    foreign = signed_pos_headers(device, key_id=other.key_id, secret=other.secret)
    problem(api.request(method, path, headers=foreign), 401, "unknown_key")


def test_an_attacker_cannot_kill_the_devices_code(
    api: httpx.Client, device: ProvisionedDevice
) -> None:
    mine = api.post("/pos/pairing-code", headers=signed_pos_headers(device))
    assert mine.status_code == 201, mine.text
    SEEN_SECRETS.add(mine.json()["pairing_code"])
    for _ in range(12):  # the attacker tries to burn the device's ten codes an hour
        forged = signed_pos_headers(device, secret=secrets.token_bytes(32))
        problem(api.post("/pos/pairing-code", headers=forged), 401, "invalid_signature")
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status["pairing_code_expires_at"] == mine.json()["expires_at"]  # still the live one
    again = api.post("/pos/pairing-code", headers=signed_pos_headers(device))
    assert again.status_code == 201  # the device itself is not rate limited by the attempts
    SEEN_SECRETS.add(again.json()["pairing_code"])


def test_the_nonce_is_shared_with_attest_and_spent_once(
    api: httpx.Client, device: ProvisionedDevice
) -> None:
    headers = signed_pos_headers(device)
    assert api.get("/pos/status", headers=headers).status_code == 200
    problem(api.get("/pos/status", headers=headers), 401, "nonce_reused")
    problem(api.post("/pos/pairing-code", headers=headers), 401, "nonce_reused")
    problem(api.post("/pos/attest", headers=headers), 401, "nonce_reused")


def test_a_revoked_key_cannot_pair(
    api: httpx.Client, admin: Admin, device: ProvisionedDevice
) -> None:
    revoked = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/{device.key_id}")
    assert revoked.status_code == 200, revoked.text
    problem(api.post("/pos/pairing-code", headers=signed_pos_headers(device)), 401, "key_revoked")


def test_the_sdk_signs_pairing_and_status(server: Server, device: ProvisionedDevice) -> None:
    from support.helpers import sdk_client

    client = sdk_client(server.url, device)
    try:
        code = client.request_pairing_code()
        SEEN_SECRETS.add(code.pairing_code)
        assert client.status().status == "inactive"
    finally:
        client.close()


# app.py's default ORJSONResponse warns in-process (the servers run with default filters).
@pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")
async def test_off_keeps_the_original_flow(runtime: Runtime, device: ProvisionedDevice) -> None:
    from viopay.app import create_app

    settings = runtime.settings.model_copy(update={"pairing_signature": "off"})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://viopay.test") as client,
    ):
        code = await client.post("/pos/pairing-code", headers=pos_headers(device.device_id))
        assert code.status_code == 201, code.text
        SEEN_SECRETS.add(code.json()["pairing_code"])
        status = await client.get("/pos/status", headers=pos_headers(device.device_id))
        assert status.status_code == 200, status.text
        # The signature headers are ignored, a wrong one too.
        forged = signed_pos_headers(device, secret=secrets.token_bytes(32))
        assert (await client.get("/pos/status", headers=forged)).status_code == 200
