"""PROTOCOL §1 and §2.1: activation headers, their check order, and the problem+json shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support.helpers import UA, Admin, ProvisionedDevice, pos_headers, problem, signed_pos_headers

ENDPOINTS = [("POST", "/pos/bootstrap"), ("POST", "/pos/pairing-code"), ("GET", "/pos/status")]
# A device that was never provisioned (its key and secret are made up).
GHOST = ProvisionedDevice("POS-FFFFFFF0", "key-ghost", "00" * 32)


def headers_for(path: str, device: ProvisionedDevice, *, ua: str = UA) -> dict[str, str]:
    """Bootstrap's activation headers; pairing-code and status are signed too (§2.1)."""
    if path == "/pos/bootstrap":
        return pos_headers(device.device_id, ua=ua)
    return signed_pos_headers(device, ua=ua)


@pytest.fixture
def device(admin: Admin) -> ProvisionedDevice:
    return admin.provision()


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("missing", ["X-Device-Id", "User-Agent", "X-Client-Type"])
def test_missing_header_is_named(
    api: httpx.Client, device: ProvisionedDevice, method: Any, path: Any, missing: str
) -> None:
    headers = {k: v for k, v in headers_for(path, device).items() if k != missing}
    # httpx adds its own User-Agent unless we send an empty header set explicitly.
    request = api.build_request(method, path, headers=headers)
    if missing == "User-Agent":
        del request.headers["User-Agent"]
    body = problem(api.send(request), 400, "missing_header")
    assert missing in body["detail"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Device-Id", "POS-8f3a2c91"),  # lower-case hex
        ("X-Device-Id", "POS-8F3A2C9"),
        ("X-Device-Id", "pos-8F3A2C91"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("User-Agent", "Viopay-POS/1.4 (Android 12; PAX-A920)"),  # not SemVer
        ("User-Agent", "Viopay-POS/01.4.2 (Android 12; PAX-A920)"),
        ("User-Agent", "Viopay-POS/1.4.2 Android 12; PAX-A920"),
        ("X-Client-Type", "web"),
    ],
)
def test_malformed_header_is_named(
    api: httpx.Client, device: ProvisionedDevice, method: Any, path: Any, header: str, value: str
) -> None:
    headers = headers_for(path, device) | {header: value}
    body = problem(api.request(method, path, headers=headers), 400, "invalid_header")
    assert header in body["detail"]


def test_semver_prerelease_and_build_accepted(api: httpx.Client, device: ProvisionedDevice) -> None:
    for version in ("1.4.2-rc.1+build.7", "2.0.0+sha.abc"):
        ua = f"Viopay-POS/{version} (Android 12; PAX-A920)"
        assert (
            api.post("/pos/bootstrap", headers=pos_headers(device.device_id, ua=ua)).status_code
            == 200
        )


@pytest.mark.parametrize(("method", "path"), ENDPOINTS[1:])
def test_old_version_gets_426(
    api: httpx.Client, device: ProvisionedDevice, method: Any, path: Any
) -> None:
    ua = "Viopay-POS/0.9.9 (Android 12; PAX-A920)"
    body = problem(
        api.request(method, path, headers=headers_for(path, device, ua=ua)),
        426,
        "app_version_unsupported",
    )
    assert body["min_supported_version"] == "1.0.0"


def test_prerelease_of_minimum_is_below_it(api: httpx.Client, device: ProvisionedDevice) -> None:
    ua = "Viopay-POS/1.0.0-beta (Android 12; PAX-A920)"
    problem(
        api.get("/pos/status", headers=signed_pos_headers(device, ua=ua)),
        426,
        "app_version_unsupported",
    )


def test_bootstrap_never_426_but_says_upgrade_required(
    api: httpx.Client, device: ProvisionedDevice
) -> None:
    ua = "Viopay-POS/0.9.9 (Android 12; PAX-A920)"
    response = api.post("/pos/bootstrap", headers=pos_headers(device.device_id, ua=ua))
    assert response.status_code == 200
    body = response.json()
    assert body["upgrade_required"] is True
    assert body["min_supported_version"] == "1.0.0"
    assert body["latest_version"] == "1.0.0"
    assert body["poll_interval"] == 5
    assert body["server_time"].endswith("Z") and len(body["server_time"]) == 20


def test_version_checked_before_device(api: httpx.Client) -> None:
    ua = "Viopay-POS/0.1.0 (Android 12; PAX-A920)"
    problem(
        api.get("/pos/status", headers=signed_pos_headers(GHOST, ua=ua)),
        426,
        "app_version_unsupported",
    )


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_unknown_device(api: httpx.Client, method: Any, path: Any) -> None:
    problem(api.request(method, path, headers=headers_for(path, GHOST)), 404, "device_not_found")


def test_disabled_device_is_403(api: httpx.Client, admin: Admin, device: ProvisionedDevice) -> None:
    assert admin.http.post(f"/admin/devices/{device.device_id}/disable").status_code == 200
    problem(
        api.post("/pos/bootstrap", headers=pos_headers(device.device_id)), 403, "device_disabled"
    )
    assert admin.http.post(f"/admin/devices/{device.device_id}/enable").status_code == 200
    assert api.post("/pos/bootstrap", headers=pos_headers(device.device_id)).status_code == 200


def test_body_over_64k_is_413_before_headers(api: httpx.Client) -> None:
    response = api.post(
        "/pos/bootstrap",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"content-type": "application/json"},
    )
    problem(response, 413, "payload_too_large")


def test_request_id_echoed_or_made(api: httpx.Client, device: ProvisionedDevice) -> None:
    mine = api.post(
        "/pos/bootstrap", headers=pos_headers(device.device_id) | {"X-Request-Id": "abc.DEF-123_x"}
    )
    assert mine.headers["x-request-id"] == "abc.DEF-123_x"
    bad = api.post(
        "/pos/bootstrap", headers=pos_headers(device.device_id) | {"X-Request-Id": "has space"}
    )
    assert bad.headers["x-request-id"] != "has space" and len(bad.headers["x-request-id"]) >= 16


def test_unknown_path_and_wrong_method(api: httpx.Client) -> None:
    problem(api.get("/pos/nothing-here"), 404, "not_found")
    problem(api.delete("/pos/bootstrap"), 405, "method_not_allowed")


def test_body_on_bodyless_endpoint_is_ignored(api: httpx.Client, device: ProvisionedDevice) -> None:
    response = api.post("/pos/bootstrap", headers=pos_headers(device.device_id), content=b"garbage")
    assert response.status_code == 200


def test_healthz_and_readyz(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ok", "database": "ok", "cache": "ok"}


def test_openapi_documents_every_endpoint_with_errors(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/pos/bootstrap",
        "/pos/pairing-code",
        "/pos/status",
        "/pos/claim",
        "/client/session",
        "/session/initiate",
        "/admin/devices",
        "/admin/merchants",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    claim = spec["paths"]["/pos/claim"]["post"]
    assert {"400", "401", "403", "404", "429"} <= set(claim["responses"])
    assert "requestBody" in claim
    assert "Problem" in spec["components"]["schemas"]


def test_ua_constant_is_valid() -> None:
    assert UA.startswith("Viopay-POS/")
