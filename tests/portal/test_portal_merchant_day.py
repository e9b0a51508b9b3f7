"""A merchant's day in the portal, in a real browser at a desktop and a phone size: search,
totals, pages both ways, CSV export, refund and cancel (owners and admins only), and every page
checked for horizontal scrolling, a heading, and axe-core's serious and critical findings."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from support import charge_kit as kit
from support.helpers import MerchantCtx, Server
from support.portal_kit import (
    DECLINED,
    PortalUser,
    activated_terminal,
    create_user,
    csrf_of,
    shot,
    sign_in,
)

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
AXE = Axe()


@pytest.fixture
def day(backend: Any, server: Server, admin: Any, make_merchant: Any) -> Iterator[dict[str, Any]]:
    """A merchant with an activated terminal and 32 charges: 29 approved, 3 declined, one of
    the approved refunded in part."""
    merchant: MerchantCtx = make_merchant(name="Harbour Street Café")
    pos = activated_terminal(backend, server, admin, merchant)
    approved = [pos.charge(1000 + i, reference=f"order-{i:02d}").json() for i in range(29)]
    declined = [pos.charge(999, card=DECLINED).json() for _ in range(3)]
    assert pos.refund(approved[3]["id"], {"amount": 250, "reason": "Wrong size"}).status == 201
    yield {"merchant": merchant, "pos": pos, "approved": approved, "declined": declined}
    pos.close()


def _context(browser: Any, size: dict[str, int]) -> Any:
    context = browser.new_context(viewport=size, locale="en-US", accept_downloads=True)
    context.set_default_timeout(15_000)
    return context


def _page(context: Any, problems: list[str]) -> Any:
    page = context.new_page()
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


def check_page(page: Any, backend: str, size_name: str, name: str) -> None:
    """No horizontal scrolling, exactly one h1, and nothing serious or critical for axe-core;
    then a screenshot under test-artifacts/screenshots/."""
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    assert width <= viewport, f"{name} at {size_name}: {width}px wide in a {viewport}px screen"
    expect(page.locator("h1")).to_have_count(1)
    results = AXE.run(page)
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, f"axe on {name} at {size_name}: {serious}"
    shot(page, backend, f"{name}-{size_name}")


def test_refund_from_the_charge_page_with_confirmation(
    backend: Any, server: Server, day: dict[str, Any], page: Any
) -> None:
    merchant: MerchantCtx = day["merchant"]
    charge = day["approved"][10]
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "owner"))
    page.goto(f"{server.url}/portal/charges/{charge['id']}")
    form = page.get_by_test_id("refund-form")
    expect(form).to_contain_text("Up to $10.10")

    page.fill("#amount", "abc")
    form.get_by_role("button", name="Refund…").click()
    expect(page.locator("#err-amount")).to_have_text(
        "Enter an amount as a number, for example 12.50."
    )
    expect(page.locator("#amount")).to_have_attribute("aria-invalid", "true")
    page.fill("#amount", "20")
    page.get_by_role("button", name="Refund…").click()
    expect(page.locator("#err-amount")).to_contain_text("at most $10.10")
    page.fill("#amount", "1.234")
    page.get_by_role("button", name="Refund…").click()
    expect(page.locator("#err-amount")).to_have_text("Use at most 2 decimals for USD.")
    assert merchant.http.get(f"/merchant/charges/{charge['id']}").json()["refunds"] == []

    page.fill("#amount", "2.5")
    page.fill("#reason", "Spilled coffee")
    page.get_by_role("button", name="Refund…").click()
    confirm = page.get_by_role("region", name="Refund $2.50?")
    expect(confirm).to_contain_text("goes back to the Visa card ending 4242")
    shot(page, backend.name, "charge-refund-confirm")
    assert merchant.http.get(f"/merchant/charges/{charge['id']}").json()["refunds"] == []
    sent = {
        name: confirm.locator(f"input[name={name}]").get_attribute("value") or ""
        for name in ("csrf_token", "idempotency_key", "amount", "reason", "confirm")
    }
    confirm.get_by_role("button", name="Confirm refund").click()
    expect(page.locator(".flash-success")).to_contain_text(
        "Refunded $2.50. The charge is now partially refunded."
    )
    expect(page.get_by_test_id("charge-status")).to_have_text("Partially refunded")
    expect(page.get_by_test_id("refund-table")).to_contain_text("Spilled coffee")
    detail = merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    assert [r["amount"] for r in detail["refunds"]] == [250]

    # The same confirmation sent again (a double click, a resend) refunds once.
    again = page.request.post(
        f"{server.url}/portal/charges/{charge['id']}/refund",
        form=sent,
        headers={"Origin": server.url},
        max_redirects=0,
    )
    assert again.status == 303
    detail = merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    assert [r["amount"] for r in detail["refunds"]] == [250]

    page.goto(f"{server.url}/portal/charges/{charge['id']}")
    page.get_by_role("button", name="Refund…").click()  # empty: all that is left
    expect(page.get_by_role("region", name="Refund $7.60?")).to_be_visible()
    page.get_by_role("button", name="Confirm refund").click()
    expect(page.get_by_test_id("charge-status")).to_have_text("Refunded")
    expect(page.get_by_test_id("refund-form")).to_have_count(0)  # nothing left to refund
    shot(page, backend.name, "charge-refunded")
    events = merchant.http.get("/merchant/events", params={"limit": 100}).json()["data"]
    refunds = [e for e in events if e["type"] == "refund.created" and e["actor"]["type"] == "user"]
    assert len(refunds) == 2


def test_cancel_where_allowed(backend: Any, server: Server, day: dict[str, Any], page: Any) -> None:
    merchant: MerchantCtx = day["merchant"]
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "admin"))
    charge = day["approved"][12]
    page.goto(f"{server.url}/portal/charges/{charge['id']}")
    page.get_by_role("button", name="Cancel charge").click()
    expect(page.get_by_role("region", name="Cancel this charge?")).to_contain_text("$10.12")
    page.get_by_role("button", name="Yes, cancel the charge").click()
    expect(page.locator(".flash-success")).to_contain_text("Canceled")
    expect(page.get_by_test_id("charge-status")).to_have_text("Canceled")
    expect(page.get_by_role("button", name="Cancel charge")).to_have_count(0)
    expect(page.get_by_test_id("refund-form")).to_have_count(0)
    assert merchant.http.get(f"/merchant/charges/{charge['id']}").json()["status"] == "canceled"

    # Not offered where the rules refuse it: a refunded charge, a decline.
    for refused in (day["approved"][3], day["declined"][0]):
        page.goto(f"{server.url}/portal/charges/{refused['id']}")
        expect(page.get_by_role("button", name="Cancel charge")).to_have_count(0)


def test_staff_see_no_refund_or_cancel_and_a_forged_post_is_refused(
    backend: Any, server: Server, day: dict[str, Any], page: Any
) -> None:
    merchant: MerchantCtx = day["merchant"]
    charge = day["approved"][5]
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "staff"))
    page.goto(f"{server.url}/portal/charges/{charge['id']}")
    expect(page.get_by_test_id("charge-amount")).to_have_text("$10.05")
    expect(page.get_by_test_id("refund-form")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel charge")).to_have_count(0)
    token = csrf_of(page)  # the sign-out form's: a valid token of this session
    for path, form in (
        ("refund", {"csrf_token": token, "amount": "1.00", "confirm": "yes"}),
        ("cancel", {"csrf_token": token, "confirm": "yes"}),
    ):
        response = page.request.post(
            f"{server.url}/portal/charges/{charge['id']}/{path}",
            form=form,
            headers={"Origin": server.url},
            max_redirects=0,
        )
        assert response.status == 403, (path, response.status)
    # Without this session's CSRF token an owner's POST is refused too (the existing rule).
    forged = page.request.post(
        f"{server.url}/portal/charges/{charge['id']}/refund",
        form={"csrf_token": "x" * 43, "amount": "1.00", "confirm": "yes"},
        headers={"Origin": server.url},
        max_redirects=0,
    )
    assert forged.status in (400, 403)
    detail = merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    assert detail["status"] == "approved" and detail["refunds"] == []


def test_search_totals_export_and_pages_both_ways(
    backend: Any, server: Server, day: dict[str, Any], page: Any
) -> None:
    merchant: MerchantCtx = day["merchant"]
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "staff"))
    page.goto(f"{server.url}/portal/charges")
    table = page.get_by_test_id("charge-table")
    expect(table.locator("tbody tr")).to_have_count(20)
    expect(page.get_by_test_id("position")).to_have_text("1–20 of 32")
    totals = page.get_by_test_id("totals")
    # 29 approved charges of $10.00 + i cents, $2.50 of them refunded.
    gross = sum(1000 + i for i in range(29))
    expect(totals).to_contain_text("32")
    expect(totals).to_contain_text(f"${gross / 100:,.2f}")
    expect(page.get_by_test_id("net")).to_have_text(f"${(gross - 250) / 100:,.2f}")
    expect(page.get_by_role("link", name="← Previous page")).to_have_count(0)

    page.get_by_role("link", name="Next page →").click()
    expect(page.get_by_test_id("position")).to_have_text("21–32 of 32")
    expect(table.locator("tbody tr")).to_have_count(12)
    expect(table).to_contain_text("order-00")
    expect(page.get_by_role("link", name="Next page →")).to_have_count(0)
    page.get_by_role("link", name="← Previous page").click()
    expect(page.get_by_test_id("position")).to_have_text("1–20 of 32")
    expect(table.locator("tbody tr").first).to_contain_text("Declined")

    page.fill("#q", "ORDER-07")
    page.get_by_role("button", name="Search").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("position")).to_have_text("1–1 of 1")
    expect(page).to_have_url(re.compile(r"q=ORDER-07"))
    page.select_option("#status", "approved")
    page.get_by_role("button", name="Filter").click()  # the search stays with the filters
    expect(table.locator("tbody tr")).to_have_count(1)
    page.goto(f"{server.url}/portal/charges?q={day['declined'][1]['id']}")
    expect(table.locator("tbody tr")).to_have_count(1)
    page.goto(f"{server.url}/portal/charges?q=4242")  # the approved charges' card
    expect(page.get_by_test_id("position")).to_have_text("1–20 of 29")
    page.goto(f"{server.url}/portal/charges?q=0002")  # the declined card's
    expect(page.get_by_test_id("position")).to_have_text("1–3 of 3")
    page.goto(f"{server.url}/portal/charges?q=nothing-like-it")
    expect(page.get_by_test_id("empty")).to_contain_text("No charges match")

    page.goto(f"{server.url}/portal/charges?status=declined")
    with page.expect_download() as downloaded:
        page.get_by_test_id("export").click()
    rows = list(csv.DictReader(io.StringIO(Path(downloaded.value.path()).read_text())))
    assert [r["status"] for r in rows] == ["declined"] * 3
    assert rows[0]["amount"] == "9.99"
    everything = page.request.get(f"{server.url}/portal/charges/export")
    assert everything.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(everything.text())))) == 32


def test_every_page_on_a_phone_and_a_desktop(
    backend: Any, server: Server, browser: Any, day: dict[str, Any]
) -> None:
    merchant: MerchantCtx = day["merchant"]
    pos: kit.PosTerminal = day["pos"]
    user: PortalUser = create_user(backend.env, merchant.merchant_id, "owner")
    charge = day["approved"][3]
    pages = {
        "devices": "/portal/devices",
        "device": f"/portal/devices/{pos.device.device_id}",
        "claim": "/portal/claim",
        "charges": "/portal/charges",
        "charge": f"/portal/charges/{charge['id']}",
        "config": "/portal/config",
        "events": "/portal/events",
        "webhooks": "/portal/webhooks",
    }
    for size_name, size in SIZES.items():
        problems: list[str] = []
        context = _context(browser, size)
        page = _page(context, problems)
        sign_in(page, server.url, user)
        for name, path in pages.items():
            page.goto(server.url + path)
            check_page(page, backend.name, size_name, name)
        # The menu reaches every section at this size: each link on screen, and it works.
        nav = page.get_by_role("navigation", name="Main")
        for label in ("Devices", "Claim a device", "Charges", "Settings", "Activity", "Webhooks"):
            link = nav.get_by_role("link", name=label)
            box = link.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]
        nav.get_by_role("link", name="Charges").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Charges")
        context.close()
        assert not problems, problems


LINES = """el => { const r = document.createRange(); r.selectNodeContents(el);
  return new Set(Array.from(r.getClientRects(), b => Math.round(b.top))).size; }"""


def _lines(locator: Any) -> int:
    """How many lines of text an element's content takes."""
    lines: int = locator.evaluate(LINES)
    return lines


def test_desktop_charge_rows_and_keyboard(
    backend: Any, server: Server, browser: Any, day: dict[str, Any]
) -> None:
    merchant: MerchantCtx = day["merchant"]
    context = _context(browser, DESKTOP)
    problems: list[str] = []
    page = _page(context, problems)
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "staff"))
    page.goto(f"{server.url}/portal/charges")
    row = page.get_by_test_id("charge-table").locator("tbody tr").nth(5)
    link = row.get_by_role("link")
    charge_id = link.inner_text()
    box = link.bounding_box()
    assert box is not None and box["x"] + box["width"] <= DESKTOP["width"], box  # on screen
    assert _lines(link) == 1, "the charge id wraps"
    for terminal in (
        page.get_by_test_id("charge-table").locator("td[data-label=Terminal]").all()[:3]
    ):
        assert _lines(terminal) == 1, "a terminal id wraps"
    amount = row.locator("td[data-label=Amount]").bounding_box()
    assert amount is not None  # anywhere on the row opens the charge: click its amount
    page.mouse.click(amount["x"] + amount["width"] / 2, amount["y"] + amount["height"] / 2)
    page.wait_for_url(re.compile(f"/portal/charges/{charge_id}$"))

    # The skip link is the first stop of the keyboard and moves focus to the content.
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert (skip.bounding_box() or {"y": -1})["y"] >= 0  # visible when focused
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # a visible focus ring
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"
    context.close()
    assert not problems, problems


def test_live_device_list_keeps_focus_and_says_when_it_stops(
    backend: Any, server: Server, browser: Any, day: dict[str, Any]
) -> None:
    merchant: MerchantCtx = day["merchant"]
    pos: kit.PosTerminal = day["pos"]
    context = _context(browser, DESKTOP)
    problems: list[str] = []
    page = _page(context, problems)
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "owner"))
    live = page.locator("[data-live-for=device-list]")
    expect(live).to_have_text("Live")
    expect(live).to_have_attribute("data-state", "live")
    link = page.locator(f"a[href='/portal/devices/{pos.device.device_id}']")
    link.focus()
    before = page.locator("#device-list").get_attribute("data-refreshed")
    renamed = merchant.http.patch(
        f"/merchant/devices/{pos.device.device_id}", json={"label": "Bar till"}
    )
    assert renamed.status_code == 200
    expect(page.locator("#device-list")).to_contain_text("Bar till")
    assert page.locator("#device-list").get_attribute("data-refreshed") != before
    href = page.evaluate("document.activeElement.getAttribute('href')")
    assert href == f"/portal/devices/{pos.device.device_id}"  # focus survived the refresh

    page.route("**/portal/devices/list*", lambda route: route.fulfill(status=503, body=""))
    expect(live).to_have_attribute("data-state", "stopped")
    expect(live).to_contain_text("stopped")
    context.close()
    assert not problems, problems


def test_activity_reads_as_a_merchant_would(
    backend: Any, server: Server, day: dict[str, Any], page: Any
) -> None:
    merchant: MerchantCtx = day["merchant"]
    owner = create_user(backend.env, merchant.merchant_id, "owner")
    sign_in(page, server.url, owner)
    charge = day["approved"][7]
    page.goto(f"{server.url}/portal/charges/{charge['id']}")
    page.fill("#amount", "1")
    page.get_by_role("button", name="Refund…").click()
    page.get_by_role("button", name="Confirm refund").click()
    expect(page.get_by_test_id("charge-status")).to_have_text("Partially refunded")

    page.goto(f"{server.url}/portal/events")
    table = page.get_by_test_id("event-table")
    # The refund's row (the fleet timer may have marked a silent terminal offline since: a
    # newer "Terminal offline" row is the activity a merchant should see too).
    newest = table.locator("tr[data-event='charge.refunded']").first
    expect(newest).to_contain_text("Payment refunded")
    expect(newest).to_contain_text(owner.email)  # a person, not a usr_ id
    expect(newest).to_contain_text("$1.00")  # money, not cents
    expect(newest).not_to_contain_text("usr_")
    expect(table.locator("tr[data-event='charge.created']").first).to_contain_text("$9.99")
    expect(table).not_to_contain_text("{")  # no raw JSON
    # Key and attestation housekeeping only behind the filter.
    expect(table.locator("tr[data-event^='key_set.']")).to_have_count(0)
    expect(table.locator("tr[data-event='device.attested']")).to_have_count(0)
    shot(page, backend.name, "events-business")
    page.get_by_role("link", name="Everything, with terminal security").click()
    expect(page).to_have_url(re.compile(r"show=all"))
    technical = page.locator("tr[data-event^='key_set.'], tr[data-event='device.attested']")
    for _ in range(5):  # the activation's events are older than the day's charges
        if technical.count() or not page.get_by_role("link", name="Next page →").count():
            break
        page.get_by_role("link", name="Next page →").click()
    assert technical.count() > 0
    shot(page, backend.name, "events-all")
