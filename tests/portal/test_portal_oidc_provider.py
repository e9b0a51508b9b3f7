"""A merchant signs into the portal at a real OpenID provider (oidc-provider shaped like a
Keycloak realm, tests/support/oidc_kit.py) in Chromium: the authorization-code flow with PKCE, short
access tokens refreshed at the provider, then out again at the provider. On both backends (the
portal's sessions live in the cache).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from support.helpers import Backend, expect_json
from support.oidc_kit import OPS, OidcStack, oidc_stack
from support.portal_kit import shot


@pytest.fixture(scope="module")
def stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    # Access tokens of 5 s, inside the portal's 30 s margin: every page refreshes them at the
    # provider (a refresh_token grant), and the merchant session is initiated again once the
    # token it was made with is gone (PROTOCOL §2.5).
    directory = tmp_path_factory.mktemp(f"portal-oidc-{backend.name}")
    for stack in oidc_stack(backend, directory, access_token_ttl=5):
        _member_of_a_merchant(stack, "Corner Coffee")
        yield stack


def _member_of_a_merchant(stack: OidcStack, name: str) -> None:
    """An operator (a service account with viopay-admin) makes the merchant and its owner."""
    token = expect_json(stack.provider.token(OPS), 200)["access_token"]
    operator = httpx.Client(base_url=stack.server.url, headers={"Authorization": f"Bearer {token}"})
    merchant = expect_json(operator.post("/admin/merchants", json={"name": name}), 201)
    expect_json(
        operator.post(
            f"/admin/merchants/{merchant['merchant_id']}/members",
            json={"subject": stack.user.sub, "role": "owner"},
        ),
        201,
    )
    operator.close()


def _sign_in_at_the_provider(page: Page, stack: OidcStack, password: str) -> None:
    page.fill("#username", stack.user.username)
    page.fill("#password", password)
    page.click("#kc-login")


def _sign_in(page: Page, stack: OidcStack) -> None:
    page.goto(f"{stack.server.url}/portal/signin")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    _sign_in_at_the_provider(page, stack, stack.user.password)
    page.wait_for_url(re.compile(re.escape(stack.server.url) + r"/portal/devices$"))


def test_a_merchant_signs_in_with_pkce_and_out_at_the_provider(
    stack: OidcStack, backend: Backend, page: Page
) -> None:
    server, provider = stack.server.url, stack.provider
    authorizations: list[str] = []
    page.on(
        "request",
        lambda r: (
            authorizations.append(r.url)
            if r.url.startswith(f"{provider.issuer}/protocol/openid-connect/auth")
            else None
        ),
    )

    page.goto(f"{server}/portal/devices")
    page.wait_for_url(re.compile(r"/portal/signin\?next="))
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
    shot(page, f"oidc-{backend.name}", "provider-signin")

    _sign_in_at_the_provider(page, stack, "not-" + stack.user.password)
    expect(page.locator("#error")).to_have_text("Invalid username or password.")
    _sign_in_at_the_provider(page, stack, stack.user.password)
    page.wait_for_url(re.compile(re.escape(server) + r"/portal/devices$"))
    expect(page.get_by_test_id("signed-in-as")).to_have_text(stack.user.email)
    expect(page.locator(".topbar")).to_contain_text("Corner Coffee")
    shot(page, f"oidc-{backend.name}", "devices")
    for name, heading in (("Settings", "Settings"), ("Charges", "Charges"), ("Devices", "Devices")):
        page.get_by_role("link", name=name).click()  # each one refreshes the token first
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.locator(".topbar")).to_contain_text("Corner Coffee")
    # Idle past the access token's life: the provider sends no `refresh_expires_in` (Keycloak
    # does), so the refresh token alone keeps the portal session. The merchant session lasted as
    # long as the token it was made with (PROTOCOL §2.5): the portal initiates it again.
    # Meanwhile the provider rotates its signing key: the tokens of the next refresh name a kid
    # the server has not seen, and the same process takes them.
    stack.provider.rotate_keys()
    page.wait_for_timeout(5_500)
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_role("heading", name="Activity", exact=True)).to_be_visible()
    expect(page.locator(".topbar")).to_contain_text("Corner Coffee")

    # The portal asked for a code bound to a PKCE challenge (the provider requires one).
    asked = {k: v[0] for k, v in parse_qs(urlsplit(authorizations[0]).query).items()}
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["response_type"] == "code" and asked["redirect_uri"].startswith(server)

    # Signing out ends the provider's session too: the next sign-in asks for the password again.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/protocol/openid-connect/logout"))
    page.get_by_role("button", name=re.compile("Yes, sign me out", re.I)).click()
    page.wait_for_url(re.compile(re.escape(server) + r"/portal/signin$"))
    page.goto(f"{server}/portal/devices")
    page.wait_for_url(re.compile(r"/portal/signin\?next="))
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
    expect(page.locator("#password")).to_be_visible()


def test_a_session_ended_at_the_provider_ends_the_portal_session(
    stack: OidcStack, page: Page
) -> None:
    _sign_in(page, stack)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    # The merchant signs out at the provider itself (another tab): it revokes the grant, so the
    # portal's next refresh is refused and the portal session ends with it.
    provider_tab = page.context.new_page()
    provider_tab.goto(f"{stack.provider.issuer}/protocol/openid-connect/logout")
    provider_tab.get_by_role("button", name=re.compile("Yes, sign me out", re.I)).click()
    expect(provider_tab.locator("body")).to_contain_text(re.compile("sign-out success", re.I))
    provider_tab.close()
    page.get_by_role("link", name="Activity").click()
    page.wait_for_url(re.compile(r"/portal/signin\?next=%2Fportal%2Fevents$"))
    expect(page.locator(".flash-info")).to_contain_text("Your session has expired")


def test_a_callback_this_browser_did_not_start_is_refused(stack: OidcStack, page: Page) -> None:
    # A code fed to the browser by someone else (login CSRF) is never exchanged.
    page.goto(f"{stack.server.url}/portal/auth/callback?code=stolen&state=forged")
    page.wait_for_url(re.compile(r"/portal/signin$"))
    expect(page.locator(".flash-info")).to_contain_text("expired or was not started here")
    expect(page.locator("#email")).to_have_count(0)  # no password form: people sign in there


def test_password_sign_in_is_off_with_an_openid_provider(stack: OidcStack) -> None:
    http = httpx.Client(base_url=stack.server.url, follow_redirects=False)
    assert 'name="csrf_token"' not in http.get("/portal/signin").text  # no form at all
    http.close()
