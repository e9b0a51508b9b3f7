"""Every portal page in a real browser, and each of its messages: devices (rename, disable, enable,
release), claim errors (invalid code, missing code, rate limit), config validation, activity."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Dialog, Page, expect

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    Server,
    signed_pos_headers,
)
from support.portal_kit import create_user, shot, sign_in


def claim_by_api(
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


def test_device_page_renames_disables_enables_and_releases(
    backend: Backend,
    server: Server,
    api: httpx.Client,
    admin: Admin,
    make_merchant: MakeMerchant,
    page: Page,
) -> None:
    owner = make_merchant(name="Blue Door Bakery")
    device = claim_by_api(api, admin, owner, "Till 1")
    claim_by_api(api, admin, owner, None)
    user = create_user(backend.env, owner.merchant_id, "owner")
    sign_in(page, server.url, user)
    expect(page.locator("tbody tr")).to_have_count(2)
    shot(page, backend.name, "devices")

    page.get_by_role("link", name="Till 1").click()
    page.wait_for_url(re.compile(f"/portal/devices/{device.device_id}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Till 1")
    shot(page, backend.name, "device")

    page.fill("#label", "  Front counter  ")
    page.get_by_role("button", name="Save label").click()
    expect(page.locator(".flash-success")).to_contain_text(re.compile("Renamed to “Front counter”"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Front counter")
    assert (
        owner.http.get(f"/merchant/devices/{device.device_id}").json()["label"] == "Front counter"
    )

    page.get_by_role("button", name="Disable").click()
    expect(page.locator(".flash-success")).to_contain_text("is disabled")
    expect(page.locator(".page-head").get_by_test_id("status")).to_contain_text("Disabled")
    assert owner.http.get(f"/merchant/devices/{device.device_id}").json()["disabled"] is True
    shot(page, backend.name, "device-disabled")

    page.get_by_role("button", name="Enable").click()
    expect(page.locator(".flash-success")).to_contain_text("is enabled again")
    assert owner.http.get(f"/merchant/devices/{device.device_id}").json()["disabled"] is False

    page.fill("#label", "")
    page.get_by_role("button", name="Save label").click()
    expect(page.locator(".flash-success")).to_contain_text("Label removed.")
    expect(page.get_by_role("heading", level=1)).to_have_text(device.device_id)

    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", on_dialog)
    page.get_by_role("button", name="Release").click()
    page.wait_for_url(re.compile(r"/portal/devices$"))
    assert dialogs and "Release" in dialogs[0]
    expect(page.locator(".flash-success")).to_contain_text("was released")
    expect(page.locator("tbody tr")).to_have_count(1)
    assert owner.http.get(f"/merchant/devices/{device.device_id}").status_code == 404

    page.goto(f"{server.url}/portal/devices/POS-00000000")
    expect(page.get_by_test_id("error-page")).to_contain_text("does not exist")
    shot(page, backend.name, "not-found")


def test_claim_messages_invalid_missing_and_rate_limited(
    backend: Backend, server: Server, make_merchant: MakeMerchant, page: Page
) -> None:
    owner = make_merchant(name="Slow Lane Diner")
    user = create_user(backend.env, owner.merchant_id, "admin")
    sign_in(page, server.url, user)
    page.goto(f"{server.url}/portal/claim")

    page.get_by_role("button", name="Claim device").click()
    expect(page.get_by_test_id("claim-error")).to_have_text(
        "Enter the 6-character pairing code shown on the terminal's screen."
    )
    shot(page, backend.name, "claim-missing-code")

    page.fill("#pairing_code", "ZZ-ZZ-ZZ")
    page.get_by_role("button", name="Claim device").click()
    expect(page.get_by_test_id("claim-error")).to_contain_text("This pairing code is not valid")
    expect(page.locator("#pairing_code")).to_have_value("ZZ-ZZ-ZZ")  # kept, to correct it
    shot(page, backend.name, "claim-invalid-code")

    for _ in range(4):  # five failed claims per user per 15 minutes (PROTOCOL §3.4)
        page.fill("#pairing_code", "ZZZZZZ")
        page.get_by_role("button", name="Claim device").click()
        expect(page.get_by_test_id("claim-error")).to_be_visible()
    page.fill("#pairing_code", "ZZZZZZ")
    page.get_by_role("button", name="Claim device").click()
    expect(page.get_by_test_id("claim-error")).to_contain_text("Too many incorrect pairing codes")
    expect(page.get_by_test_id("claim-error")).to_contain_text(re.compile(r"about \d+ minutes?"))
    shot(page, backend.name, "claim-rate-limited")


def test_config_saves_and_shows_the_schemas_messages_next_to_the_fields(
    backend: Backend, server: Server, make_merchant: MakeMerchant, page: Page
) -> None:
    owner = make_merchant(name="Tip Top Tacos")
    user = create_user(backend.env, owner.merchant_id, "owner")
    sign_in(page, server.url, user)
    page.get_by_role("link", name="Settings").click()
    expect(page.locator("#tip\\.percentages")).to_have_value("15, 18, 20")
    expect(page.locator("#branding\\.display_name")).to_have_value("Tip Top Tacos")
    shot(page, backend.name, "config")

    expect(page.locator("#tax\\.rate")).to_have_value("0")
    expect(page.locator("#surcharge\\.max_amount")).to_have_value("0.00")
    page.fill("#tip\\.percentages", "10, 15, 15")
    page.check("#tax\\.enabled")
    page.fill("#tax\\.rate", "200")
    page.fill("#surcharge\\.rate", "3.333")
    page.fill("#surcharge\\.max_amount", "lots")
    page.fill("#branding\\.primary_color", "blue")
    page.fill("#branding\\.logo_url", "http://example.com/logo.png")
    page.fill("#branding\\.display_name", " ")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_test_id("config-errors")).to_be_visible()
    expect(page.locator("#err-tip-percentages")).to_have_text("Percentages must not repeat.")
    expect(page.locator("#err-tax-rate")).to_have_text(
        "Enter a percentage from 0 to 100, for example 8.25."
    )
    expect(page.locator("#err-surcharge-rate")).to_have_text(
        "Enter a percentage from 0 to 100, for example 8.25."
    )
    expect(page.locator("#err-surcharge-max_amount")).to_have_text(
        "Enter an amount as a number, for example 12.50."
    )
    expect(page.locator("#err-branding-primary_color")).to_contain_text("#RRGGBB")
    expect(page.locator("#err-branding-logo_url")).to_have_text("Must be an https URL.")
    expect(page.locator("#err-branding-display_name")).to_have_text(
        "Enter the name customers see, up to 200 characters."
    )
    expect(page.locator("body")).not_to_contain_text("Input should")  # no validator wording
    expect(page.locator("#tax\\.rate")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#tax\\.enabled")).to_be_checked()  # what was typed is kept
    shot(page, backend.name, "config-errors")
    assert owner.http.get("/merchant/config").json()["config_version"] == 1  # nothing saved

    page.fill("#tip\\.percentages", "10, 15, 20")
    page.fill("#tax\\.rate", "8.25")
    page.fill("#surcharge\\.rate", "3 %")
    page.fill("#surcharge\\.max_amount", "$5")
    page.fill("#branding\\.primary_color", "#0f766e")
    page.fill("#branding\\.logo_url", "")
    page.fill("#branding\\.display_name", "Tip Top Tacos")
    page.fill("#branding\\.receipt_footer", "Gracias!\nSee you soon")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator(".flash-success")).to_contain_text("version 2")
    config = owner.http.get("/merchant/config").json()
    assert config["config_version"] == 2
    assert config["tip"]["percentages"] == [10, 15, 20]
    assert config["tax"] == {"enabled": True, "rate_bps": 825, "inclusive": False}
    assert config["surcharge"] == {"enabled": False, "rate_bps": 300, "max_amount": 500}
    assert config["branding"]["primary_color"] == "#0F766E"
    assert config["branding"]["receipt_footer"] == "Gracias!\nSee you soon"
    expect(page.locator("#tax\\.rate")).to_have_value("8.25")
    expect(page.locator("#surcharge\\.max_amount")).to_have_value("5.00")
    shot(page, backend.name, "config-saved")

    page.get_by_role("button", name="Save settings").click()
    expect(page.locator(".flash-info")).to_contain_text("Nothing changed")
    assert owner.http.get("/merchant/config").json()["config_version"] == 2


def test_activity_lists_the_merchants_events_newest_first(
    backend: Backend,
    server: Server,
    api: httpx.Client,
    admin: Admin,
    make_merchant: MakeMerchant,
    page: Page,
) -> None:
    owner = make_merchant(name="Event Horizon Cafe")
    device = claim_by_api(api, admin, owner, "Till 9")
    user = create_user(backend.env, owner.merchant_id, "staff")
    assert owner.http.post(f"/merchant/devices/{device.device_id}/disable").status_code == 200
    sign_in(page, server.url, user)
    page.get_by_role("link", name="Activity").click()
    rows = page.get_by_test_id("event-table").locator("tbody tr")
    expect(rows.first).to_contain_text("Terminal disabled")  # the last change comes first
    expect(rows.first).to_contain_text("Till 9")  # the terminal by its name
    expect(rows.first).to_contain_text(f"API client {owner.subject}")  # who made it
    table = page.get_by_test_id("event-table")
    expect(table).to_contain_text("Team member added")
    expect(table).to_contain_text("Terminal claimed")
    expect(table).to_contain_text("Account opened")
    shot(page, backend.name, "events")
