"""Merchant API views of §6: devices (list, get, disable/enable/release) and audit events."""

from __future__ import annotations

import httpx

from support.helpers import (
    Admin,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    problem,
    signed_pos_headers,
)


def claim(
    api: httpx.Client, admin: Admin, owner: MerchantCtx, label: str | None = None
) -> ProvisionedDevice:
    device = admin.provision()
    code = api.post("/pos/pairing-code", headers=signed_pos_headers(device)).json()["pairing_code"]
    response = owner.http.post("/pos/claim", json={"pairing_code": code, "label": label})
    assert response.status_code == 200, response.text
    return device


def test_device_list_pages_newest_first(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    ids = [claim(api, admin, owner, f"till {i}").device_id for i in range(3)]
    first = owner.http.get("/merchant/devices", params={"limit": 2}).json()
    assert [d["device_id"] for d in first["data"]] == ids[::-1][:2]
    assert first["next_cursor"]
    second = owner.http.get(
        "/merchant/devices", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [d["device_id"] for d in second["data"]] == [ids[0]] and second["next_cursor"] is None
    device = first["data"][0]
    assert set(device) == {
        "device_id",
        "status",
        "disabled",
        "label",
        "terminal_id",
        "merchant_id",
        "app_version",
        "last_seen_at",
        "claimed_at",
        "activated_at",
        "health",
    }
    assert device["health"]["online"] is False  # no heartbeat yet (PROTOCOL §8)
    assert (
        device["status"] == "claimed"
        and device["app_version"] == "1.4.2"
        and device["activated_at"] is None
    )
    problem(owner.http.get("/merchant/devices", params={"limit": 0}), 400, "invalid_request")
    problem(owner.http.get("/merchant/devices", params={"cursor": "%%%"}), 400, "invalid_request")


def test_other_merchants_device_is_not_found(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner, stranger = make_merchant(), make_merchant()
    device = claim(api, admin, owner)
    problem(stranger.http.get(f"/merchant/devices/{device.device_id}"), 404, "not_found")
    problem(stranger.http.post(f"/merchant/devices/{device.device_id}/disable"), 404, "not_found")
    assert (
        owner.http.get(f"/merchant/devices/{device.device_id}").json()["device_id"]
        == device.device_id
    )


def test_staff_reads_but_cannot_change(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    device = claim(api, admin, owner)
    staff_client = admin.client(merchant_id=owner.merchant_id, role="staff")
    import httpx

    from support.helpers import client_token

    token = client_token(
        str(owner.http.base_url).rstrip("/"),
        staff_client["client_id"],
        staff_client["client_secret"],
    )
    with httpx.Client(
        base_url=owner.http.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as staff:
        assert (
            staff.post("/session/initiate", json={"merchant_id": owner.merchant_id}).status_code
            == 201
        )
        assert staff.get(f"/merchant/devices/{device.device_id}").status_code == 200
        problem(staff.post(f"/merchant/devices/{device.device_id}/disable"), 403, "forbidden")
        assert staff.get("/merchant/events").status_code == 200


def test_disable_enable_release(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    device = claim(api, admin, owner)
    disabled = owner.http.post(f"/merchant/devices/{device.device_id}/disable").json()
    assert disabled["disabled"] is True
    problem(api.get("/pos/status", headers=signed_pos_headers(device)), 403, "device_disabled")
    assert (
        owner.http.post(f"/merchant/devices/{device.device_id}/enable").json()["disabled"] is False
    )
    released = owner.http.post(f"/merchant/devices/{device.device_id}/release").json()
    assert (
        released["status"] == "inactive"
        and released["terminal_id"] is None
        and released["merchant_id"] is None
    )
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status["status"] == "inactive" and status["merchant"] is None
    problem(owner.http.get(f"/merchant/devices/{device.device_id}"), 404, "not_found")
    # Released devices pair again.
    assert api.post("/pos/pairing-code", headers=signed_pos_headers(device)).status_code == 201


def test_events_record_who_did_what(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    device = claim(api, admin, owner, "Front")
    owner.http.post(f"/merchant/devices/{device.device_id}/disable")
    events = owner.http.get("/merchant/events").json()["data"]
    kinds = [e["type"] for e in events]
    assert kinds.index("device.disabled") < kinds.index("device.claimed")  # newest first
    claimed = next(e for e in events if e["type"] == "device.claimed")
    assert claimed["actor"] == {"type": "client", "id": owner.subject}
    assert claimed["subject"] == {"type": "device", "id": device.device_id}
    assert claimed["id"].startswith("evt_") and claimed["data"]["label"] == "Front"
    stranger = make_merchant()
    assert all(
        e["subject"]["id"] != device.device_id
        for e in stranger.http.get("/merchant/events").json()["data"]
    )
