"""Step 4 of the flow in a real browser: a terminal shows a code, a merchant types it in the portal."""

from __future__ import annotations

import re
import secrets
import threading
import time

from playwright.sync_api import Page, expect

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MakeMerchant,
    ProvisionedDevice,
    Server,
    signed_pos_headers,
)
from support.portal_kit import create_user, shot, sign_in
from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore


def test_a_terminal_in_pairing_mode_is_claimed_by_typing_its_code(
    backend: Backend, server: Server, make_merchant: MakeMerchant, page: Page
) -> None:
    provisioned = backend.cli("device", "provision", "POS-" + secrets.token_hex(4).upper())
    SEEN_SECRETS.add(provisioned["identity_secret"])
    merchant = make_merchant(name="Corner Coffee")
    user = create_user(
        backend.env, merchant.merchant_id, "owner", email=f"Ann.{secrets.token_hex(3)}@Example.com"
    )

    store = MemoryKeyStore(
        identity=IdentityKey(
            key_id=provisioned["key_id"], secret=bytes.fromhex(provisioned["identity_secret"])
        )
    )
    with DeviceClient(server.url, device_id=provisioned["device_id"], key_store=store) as device:
        assert device.bootstrap().device_status == "inactive"
        code = device.request_pairing_code().pairing_code
        SEEN_SECRETS.add(code)
        statuses: list[str] = []
        waiter = threading.Thread(
            target=lambda: statuses.append(
                device.wait_until_claimed(sleep=lambda _: time.sleep(0.2)).status
            )
        )
        waiter.start()

        page.goto(f"{server.url}/portal/signin")
        shot(page, backend.name, "signin")
        sign_in(page, server.url, user)
        expect(page.get_by_test_id("empty")).to_contain_text("No terminals yet")
        expect(page.get_by_test_id("signed-in-as")).to_have_text(user.email)
        shot(page, backend.name, "devices-empty")

        page.get_by_role("link", name="Claim a device").first.click()
        page.wait_for_url(re.compile(r"/portal/claim$"))
        # As a merchant might type it: lower case, a space and a hyphen.
        page.fill("#pairing_code", f"{code[:3].lower()} - {code[3:].lower()}")
        page.fill("#label", "Front counter")
        shot(page, backend.name, "claim-typed")
        page.get_by_role("button", name="Claim device").click()

        page.wait_for_url(re.compile(r"/portal/devices$"))
        expect(page.locator(".flash-success")).to_contain_text(provisioned["device_id"])
        row = page.locator(f"tr[data-device='{provisioned['device_id']}']")
        expect(row.get_by_test_id("status")).to_have_text("Claimed")
        expect(row).to_contain_text("Front counter")
        expect(row).to_contain_text(re.compile(r"TID-\d{6}"))
        shot(page, backend.name, "devices-claimed")

        waiter.join(timeout=30)
        assert statuses == ["claimed"]  # and the terminal saw it too
        status = device.status()
        assert status.merchant is not None and status.merchant.id == merchant.merchant_id


def test_the_device_list_shows_a_terminal_claimed_elsewhere_without_a_reload(
    backend: Backend, server: Server, admin: Admin, make_merchant: MakeMerchant, page: Page
) -> None:
    owner = make_merchant(name="Harbour Books")
    user = create_user(backend.env, owner.merchant_id, "admin")
    sign_in(page, server.url, user)
    expect(page.get_by_test_id("empty")).to_be_visible()
    marker = page.evaluate("() => { window.__notReloaded = true; return true; }")
    assert marker

    # Another member claims a terminal through the merchant API while the page stays open.
    device = admin.provision()
    code = server_code(server.url, device)
    assert (
        owner.http.post("/pos/claim", json={"pairing_code": code, "label": "Till 2"}).status_code
        == 200
    )

    row = page.locator(f"tr[data-device='{device.device_id}']")
    expect(row.get_by_test_id("status")).to_have_text("Claimed", timeout=15_000)
    assert page.evaluate("() => window.__notReloaded === true")  # fetched, not reloaded
    # And a rename through the API shows up the same way.
    assert (
        owner.http.patch(
            f"/merchant/devices/{device.device_id}", json={"label": "Back office"}
        ).status_code
        == 200
    )
    expect(row).to_contain_text("Back office", timeout=15_000)
    shot(page, backend.name, "devices-live")


def server_code(url: str, device: ProvisionedDevice) -> str:
    import httpx

    code: str = httpx.post(f"{url}/pos/pairing-code", headers=signed_pos_headers(device)).json()[
        "pairing_code"
    ]
    SEEN_SECRETS.add(code)
    return code
