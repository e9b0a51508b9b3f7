"""The charges pages in a real browser: the list with its filters and pages, a charge with refunds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Page, expect

from support.helpers import Admin, Backend, MakeMerchant, Server
from support.portal_kit import DECLINED, activated_terminal, create_user, shot, sign_in

if TYPE_CHECKING:
    pass


@pytest.fixture
def shop(
    backend: Backend, server: Server, admin: Admin, make_merchant: MakeMerchant
) -> Iterator[dict[str, Any]]:
    """An activated terminal with 23 charges: 21 approved (one of them refunded in part), 2 declined."""
    merchant = make_merchant(name="Charge Street Deli")
    pos = activated_terminal(backend, server, admin, merchant)
    charges = [pos.charge(100 + i, reference=f"order-{i:02d}").json() for i in range(21)]
    declined = [pos.charge(999, card=DECLINED).json() for _ in range(2)]
    refunded = charges[20]  # the newest approved charge
    assert (
        pos.refund(refunded["id"], {"amount": 50, "reason": "Customer returned an item"}).status
        == 201
    )
    yield {
        "merchant": merchant,
        "pos": pos,
        "approved": charges,
        "declined": declined,
        "refunded": refunded,
    }
    pos.close()


def test_charges_list_filters_pages_and_details(
    backend: Backend, server: Server, shop: dict[str, Any], page: Page
) -> None:
    merchant, pos = shop["merchant"], shop["pos"]
    user = create_user(backend.env, merchant.merchant_id, "staff")
    sign_in(page, server.url, user)
    row = page.locator(f"tr[data-device='{pos.device.device_id}']")
    expect(row.get_by_test_id("status")).to_have_text("Activated")

    page.get_by_role("link", name="Charges").click()
    table = page.get_by_test_id("charge-table")
    expect(table.locator("tbody tr")).to_have_count(20)  # one page
    expect(table.locator("tbody tr").first).to_contain_text("$9.99")  # newest first: a decline
    expect(table.locator("tbody tr").first).to_contain_text("Declined")
    expect(page.get_by_test_id("position")).to_have_text("1–20 of 23")
    shot(page, backend.name, "charges")

    page.get_by_role("link", name="Next page →").click()
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(page.get_by_test_id("position")).to_have_text("21–23 of 23")
    expect(table).to_contain_text("order-00")
    page.get_by_role("link", name="← Previous page").click()
    expect(table.locator("tbody tr")).to_have_count(20)

    page.select_option("#status", "declined")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"status=declined"))
    page.select_option("#status", "partially_refunded")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("−$0.50 refunded")
    shot(page, backend.name, "charges-filtered")

    page.select_option("#status", "")
    page.select_option("#terminal", pos.terminal_id)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    page.fill("#from", tomorrow)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_test_id("empty")).to_contain_text("No charges match")
    today = datetime.now(UTC).date().isoformat()
    page.fill("#from", today)
    page.fill("#to", today)
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(20)

    page.goto(f"{server.url}/portal/charges?from={tomorrow}&to={today}")
    expect(page.locator("#err-to")).to_have_text("The end date must be on or after the start date.")
    page.goto(f"{server.url}/portal/charges?from=28/11/2026")
    expect(page.locator("#err-from")).to_have_text(
        "Enter a date as YYYY-MM-DD, from 1970-01-01 to 9998-12-31."
    )
    shot(page, backend.name, "charges-filter-error")

    refunded = shop["refunded"]
    page.goto(f"{server.url}/portal/charges")
    page.get_by_role("link", name=refunded["id"]).click()
    expect(page.get_by_test_id("charge-amount")).to_have_text("$1.20")
    refunds = page.get_by_test_id("refund-table")
    expect(refunds.locator("tbody tr")).to_have_count(1)
    expect(refunds).to_contain_text("$0.50")
    expect(refunds).to_contain_text("Customer returned an item")
    expect(page.locator("body")).to_contain_text("•••• 4242")
    expect(page.locator("body")).not_to_contain_text("4242424242424242")  # masked, always
    shot(page, backend.name, "charge")

    page.goto(f"{server.url}/portal/charges/{shop['declined'][0]['id']}")
    expect(page.locator("body")).to_contain_text("Card declined")
    expect(page.locator("body")).to_contain_text("No refunds")
    shot(page, backend.name, "charge-declined")

    page.goto(f"{server.url}/portal/charges/ch_doesnotexist")
    expect(page.get_by_test_id("error-page")).to_contain_text("does not exist")


def test_a_new_merchants_charges_page_is_an_empty_state(
    backend: Backend, server: Server, make_merchant: MakeMerchant, page: Page
) -> None:
    merchant = make_merchant(name="Quiet Corner")
    sign_in(page, server.url, create_user(backend.env, merchant.merchant_id, "owner"))
    page.goto(f"{server.url}/portal/charges")
    expect(page.get_by_test_id("empty")).to_contain_text("No charges yet")
    shot(page, backend.name, "charges-empty")
