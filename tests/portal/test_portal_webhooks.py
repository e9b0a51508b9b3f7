"""The Webhooks page in a real browser: add an endpoint, see its secret once (and verify a
delivery with it), the delivery log with a retry, a bad URL's message, rotate and delete;
and health on the device page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson
import pytest
from playwright.sync_api import Page, expect
from standardwebhooks import Webhook

from support.helpers import SEEN_SECRETS, Backend, MakeMerchant, Server
from support.portal_kit import create_user, shot, sign_in
from support.webhook_receiver import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def test_webhooks_page(
    backend: Backend, server: Server, make_merchant: MakeMerchant, page: Page, receiver: Receiver
) -> None:
    owner = make_merchant(name="Hook & Ladder")
    user = create_user(backend.env, owner.merchant_id, "owner")
    sign_in(page, server.url, user)
    page.get_by_role("link", name="Webhooks").click()
    page.wait_for_url(re.compile(r"/portal/webhooks$"))
    expect(page.get_by_test_id("empty")).to_be_visible()

    page.fill("#url", "ftp://example.com/hooks")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#err-url")).to_be_visible()

    page.fill("#url", receiver.url)
    page.fill("#description", "Order system")
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.get_by_test_id("secret-value").inner_text().strip()
    SEEN_SECRETS.add(secret)
    assert secret.startswith("whsec_")
    shot(page, backend.name, "webhook-created")

    # The endpoint's own creation is its first event: it arrives signed with that secret.
    receiver.wait(lambda: bool(receiver.succeeded_ids()))
    got = receiver.received[0]
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "webhook_endpoint.created" == orjson.loads(got.body)["type"]

    (endpoint,) = owner.http.get("/merchant/webhook-endpoints").json()["data"]
    assert endpoint["description"] == "Order system"
    page.goto(f"{server.url}/portal/webhooks/{endpoint['id']}")
    expect(page.get_by_test_id("secret")).to_have_count(0)  # shown once only
    expect(page.get_by_test_id("delivery-status").first).to_have_text("Succeeded")
    page.get_by_role("button", name="Retry").first.click()
    expect(page.locator(".flash-success")).to_contain_text("Retry queued")
    receiver.wait(lambda: len(receiver.received) >= 2)
    shot(page, backend.name, "webhook-deliveries")

    page.get_by_role("button", name="Rotate").click()
    rotated = page.get_by_test_id("secret-value").inner_text().strip()
    SEEN_SECRETS.add(rotated)
    assert rotated.startswith("whsec_") and rotated != secret

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r"/portal/webhooks$"))
    expect(page.locator(".flash-success")).to_contain_text("deleted")
    expect(page.get_by_test_id("empty")).to_be_visible()
    endpoints = owner.http.get("/merchant/webhook-endpoints").json()["data"]
    assert endpoints == []
