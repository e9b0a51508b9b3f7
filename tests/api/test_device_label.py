"""PATCH /merchant/devices/{device_id} {"label"}: rename a device (owner or admin)."""

from __future__ import annotations

import httpx

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    problem,
    signed_pos_headers,
)


def claimed(
    api: httpx.Client, admin: Admin, owner: MerchantCtx, label: str | None = None
) -> ProvisionedDevice:
    device = admin.provision()
    code = api.post("/pos/pairing-code", headers=signed_pos_headers(device)).json()["pairing_code"]
    SEEN_SECRETS.add(code)
    assert (
        owner.http.post("/pos/claim", json={"pairing_code": code, "label": label}).status_code
        == 200
    )
    return device


def test_rename_and_clear_a_label(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    device = claimed(api, admin, owner, "Till 1")
    renamed = owner.http.patch(
        f"/merchant/devices/{device.device_id}", json={"label": "  Front counter "}
    )
    assert renamed.status_code == 200, renamed.text
    assert (
        renamed.json()["label"] == "Front counter"
        and renamed.json()["device_id"] == device.device_id
    )
    assert (
        owner.http.get(f"/merchant/devices/{device.device_id}").json()["label"] == "Front counter"
    )
    for empty in (None, "", "   "):
        cleared = owner.http.patch(f"/merchant/devices/{device.device_id}", json={"label": empty})
        assert cleared.status_code == 200 and cleared.json()["label"] is None
    events = owner.http.get("/merchant/events").json()["data"]
    renames = [e for e in events if e["type"] == "device.renamed"]
    assert len(renames) == 2  # clearing an empty label again changes nothing
    assert renames[-1]["data"] == {"label": "Front counter", "previous_label": "Till 1"}
    assert renames[-1]["subject"] == {"type": "device", "id": device.device_id}


def test_rename_rules(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    device = claimed(api, admin, owner)
    path = f"/merchant/devices/{device.device_id}"
    problem(owner.http.patch(path, json={"label": "x" * 65}), 400, "invalid_request")
    problem(owner.http.patch(path, json={"label": "two\nlines"}), 400, "invalid_request")
    problem(owner.http.patch(path, json={}), 400, "invalid_request")
    problem(owner.http.patch(path, json={"label": 7}), 400, "invalid_request")
    problem(
        owner.http.patch(path, content=b"label=x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    staff = make_merchant("staff")
    problem(staff.http.patch(path, json={"label": "mine"}), 403, "forbidden")
    stranger = make_merchant()
    problem(stranger.http.patch(path, json={"label": "mine"}), 404, "not_found")
    assert owner.http.get(path).json()["label"] is None
