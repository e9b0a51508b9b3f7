"""Portal security: roles enforced server-side, CSRF on every form, sign-in errors and limits,
security headers, the session cookie, sign-out, and HTML errors that leave the API's alone."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    Server,
    present,
    signed_pos_headers,
)
from support.portal_kit import PortalUser, create_user, csrf_of, shot, sign_in

SUBMIT_FORM = """([action, fields]) => {
  const form = document.createElement("form");
  form.method = "post";
  form.action = action;
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.type = "hidden"; input.name = name; input.value = value;
    form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
}"""


def claimed_device(
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


def test_staff_see_everything_and_change_nothing(
    backend: Backend,
    server: Server,
    api: httpx.Client,
    admin: Admin,
    make_merchant: MakeMerchant,
    page: Page,
) -> None:
    owner = make_merchant(name="Staff Room Coffee")
    device = claimed_device(api, admin, owner, "Till 1")
    staff = create_user(backend.env, owner.merchant_id, "staff")
    sign_in(page, server.url, staff)
    expect(page.locator(".topbar")).to_contain_text("staff")
    expect(page.get_by_role("link", name="Claim a device")).to_have_count(0)
    expect(page.locator(f"tr[data-device='{device.device_id}']")).to_be_visible()

    page.goto(f"{server.url}/portal/devices/{device.device_id}")
    for name in ("Save label", "Disable", "Release"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    shot(page, backend.name, "device-staff")
    page.goto(f"{server.url}/portal/claim")
    expect(page.get_by_test_id("role-notice")).to_be_visible()
    page.goto(f"{server.url}/portal/config")
    expect(page.get_by_test_id("role-notice")).to_be_visible()
    expect(page.get_by_role("button", name="Save settings")).to_have_count(0)
    expect(page.locator("#tip\\.percentages")).to_be_disabled()
    shot(page, backend.name, "config-staff")

    token = csrf_of(page)  # a valid token: only the role stands in the way
    posts = {
        f"/portal/devices/{device.device_id}/disable": {},
        f"/portal/devices/{device.device_id}/release": {},
        f"/portal/devices/{device.device_id}/label": {"label": "Hacked"},
        "/portal/claim": {"pairing_code": "ABCDEF"},
        "/portal/config": {
            "tip.percentages": "1",
            "tax.rate": "0",
            "surcharge.rate": "0",
            "surcharge.max_amount": "0",
            "branding.display_name": "Hacked",
            "branding.primary_color": "#000000",
        },
    }
    for path, fields in posts.items():
        response = page.request.post(f"{server.url}{path}", form={"csrf_token": token, **fields})
        assert response.status == 403, (path, response.status)
        assert "Your role lets you view" in response.text()
    seen = owner.http.get(f"/merchant/devices/{device.device_id}").json()
    assert seen["disabled"] is False and seen["label"] == "Till 1" and seen["status"] == "claimed"
    assert owner.http.get("/merchant/config").json()["config_version"] == 1

    page.evaluate(
        SUBMIT_FORM, [f"/portal/devices/{device.device_id}/disable", {"csrf_token": token}]
    )
    expect(page.get_by_test_id("error-page")).to_contain_text("Your role lets you view")
    shot(page, backend.name, "forbidden")


def test_forms_without_this_sessions_csrf_token_are_refused(
    backend: Backend,
    server: Server,
    api: httpx.Client,
    admin: Admin,
    make_merchant: MakeMerchant,
    page: Page,
) -> None:
    owner = make_merchant(name="Token Tavern")
    device = claimed_device(api, admin, owner)
    sign_in(page, server.url, create_user(backend.env, owner.merchant_id, "owner"))
    token = csrf_of(page)
    disable = f"{server.url}/portal/devices/{device.device_id}/disable"
    for form, headers in (
        ({}, {}),  # no token
        ({"csrf_token": "x" * len(token)}, {}),  # a wrong one
        (
            {"csrf_token": token},
            {"Origin": "https://evil.example"},
        ),  # the right one, from another site
        ({"csrf_token": token}, {"Origin": "null"}),  # an opaque origin (a sandboxed frame, …)
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ):
        response = page.request.post(disable, form={**form}, headers=headers)
        assert response.status == 403, (form, headers)
        assert "This form was not sent from this portal" in response.text()
    assert owner.http.get(f"/merchant/devices/{device.device_id}").json()["disabled"] is False
    signout = page.request.post(f"{server.url}/portal/signout", form={})
    assert signout.status == 403

    page.evaluate(SUBMIT_FORM, [f"/portal/devices/{device.device_id}/disable", {}])
    expect(page.get_by_test_id("error-page")).to_contain_text(
        "This form was not sent from this portal"
    )
    shot(page, backend.name, "csrf-refused")
    page.goto(f"{server.url}/portal/devices")  # still signed in: the refused sign-out did nothing
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/portal/signin$"))
    expect(page.locator(".flash-info")).to_contain_text("You have signed out.")


def test_sign_in_errors_say_what_to_do_and_nothing_more(
    backend: Backend, server: Server, admin: Admin, make_merchant: MakeMerchant, page: Page
) -> None:
    owner = make_merchant(name="Wrong Turn Pizza")
    user = create_user(backend.env, owner.merchant_id, "owner")
    page.goto(f"{server.url}/portal/signin")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_have_text("Enter your email and password.")

    page.fill("#email", user.email.upper())  # emails match whatever their case…
    page.fill("#password", user.password + "x")  # …passwords do not
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_have_text("The email or password is incorrect.")
    expect(page.locator("#email")).to_have_value(user.email.upper())
    expect(page.locator("#password")).to_have_value("")  # never sent back
    shot(page, backend.name, "signin-wrong-password")
    page.fill("#email", "nobody@example.com")
    page.fill("#password", "whatever-it-is")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_have_text("The email or password is incorrect.")

    page.get_by_role("link", name="API client").click()
    page.fill("#client_id", "cli_nosuchclient")
    page.fill("#client_secret", "vsk_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_have_text(
        "The client ID or secret is incorrect."
    )
    shot(page, backend.name, "signin-client-wrong")

    victim = create_user(backend.env, owner.merchant_id, "staff")
    page.goto(f"{server.url}/portal/signin")
    for _ in range(10):  # ten failures per account per 15 minutes
        page.fill("#email", victim.email)
        page.fill("#password", "guess-" + "x" * 10)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("signin-error")).to_have_text(
            "The email or password is incorrect."
        )
    page.fill("#email", victim.email)
    page.fill("#password", victim.password)  # even the right password waits
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text(
        "Too many failed sign-ins. Try again in about"
    )
    shot(page, backend.name, "signin-rate-limited")

    sign_in(page, server.url, user)  # another account is not held up
    expect(page.get_by_test_id("signed-in-as")).to_have_text(user.email)


def test_api_clients_sign_in_and_members_of_several_merchants_pick_one(
    backend: Backend, server: Server, admin: Admin, make_merchant: MakeMerchant, page: Page
) -> None:
    first = make_merchant(name="Alpha Atelier")
    second = make_merchant(name="Beta Bistro")
    client = admin.client(merchant_id=first.merchant_id, role="admin")
    page.goto(f"{server.url}/portal/signin?as=client")
    shot(page, backend.name, "signin-client")
    page.fill("#client_id", client["client_id"])
    page.fill("#client_secret", client["client_secret"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/portal/devices$"))  # one merchant: straight in
    expect(page.locator(".topbar")).to_contain_text("Alpha Atelier")
    expect(page.get_by_test_id("signed-in-as")).to_have_text(client["client_id"])
    page.get_by_role("button", name="Sign out").click()

    user = create_user(backend.env, first.merchant_id, "owner")
    admin.add_member(second.merchant_id, user.user_id, "staff")
    sign_in(page, server.url, user, expect="/portal/merchants")
    expect(page.locator(".picker li")).to_have_count(2)
    shot(page, backend.name, "merchant-picker")
    page.get_by_role("button", name=re.compile("Beta Bistro")).click()
    page.wait_for_url(re.compile(r"/portal/devices$"))
    expect(page.locator(".topbar")).to_contain_text("Beta Bistro")
    expect(page.locator(".topbar")).to_contain_text("staff")
    page.get_by_role("link", name="Switch merchant").click()
    page.get_by_role("button", name=re.compile("Alpha Atelier")).click()
    expect(page.locator(".topbar")).to_contain_text("Alpha Atelier")
    expect(page.locator(".topbar")).to_contain_text("owner")

    token = csrf_of(page)  # a merchant it does not belong to: refused like the API's 403
    picked = page.request.post(
        f"{server.url}/portal/merchants",
        form={"csrf_token": token, "merchant_id": make_merchant().merchant_id},
    )
    assert picked.ok and "You are not a member of that merchant." in picked.text()


def _signed_in_client(server: Server, user: PortalUser) -> httpx.Client:
    http = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    page = http.get("/portal/signin")
    token = present(re.search(r'name="csrf_token" value="([^"]+)"', page.text)).group(1)
    answer = http.post(
        "/portal/signin",
        data={
            "csrf_token": token,
            "mode": "user",
            "email": user.email,
            "password": user.password,
            "next": "https://evil.example/x",
        },
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/devices"  # never another site
    return http


def test_headers_cookie_sign_out_and_error_formats(
    backend: Backend, server: Server, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant(name="Header House")
    user = create_user(backend.env, owner.merchant_id, "owner")
    page = httpx.get(f"{server.url}/portal/signin")
    csp = page.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("viopay_portal=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie  # plain HTTP on 127.0.0.1 only
    remote = httpx.get(f"{server.url}/portal/signin", headers={"Host": "portal.example.com"})
    assert remote.headers["set-cookie"].startswith("__Host-viopay_portal=")
    assert "Secure" in remote.headers["set-cookie"] and "HttpOnly" in remote.headers["set-cookie"]
    # No inline script: the one script tag loads the static file.
    assert page.text.count("<script") == 1 and '<script src="/portal/static/portal.js' in page.text

    anonymous = httpx.get(f"{server.url}/portal/charges?status=declined")
    assert anonymous.status_code == 303
    assert (
        anonymous.headers["location"]
        == "/portal/signin?next=%2Fportal%2Fcharges%3Fstatus%3Ddeclined"
    )

    missing = httpx.get(f"{server.url}/portal/no/such/page")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in missing.headers
    api_missing = httpx.get(f"{server.url}/no/such/path")
    assert (
        api_missing.status_code == 404
        and api_missing.headers["content-type"] == "application/problem+json"
    )
    api_unauthorized = httpx.get(f"{server.url}/merchant/devices")
    assert api_unauthorized.status_code == 401
    assert api_unauthorized.headers["content-type"] == "application/problem+json"
    assert "content-security-policy" not in api_unauthorized.headers

    http = _signed_in_client(server, user)
    assert http.get("/portal/devices").status_code == 200
    assert user.password not in http.get("/portal/devices").text
    stolen = dict(http.cookies)
    tampered = stolen["viopay_portal"][:-2] + (
        "AA" if not stolen["viopay_portal"].endswith("AA") else "BB"
    )
    forged = httpx.get(f"{server.url}/portal/devices", cookies={"viopay_portal": tampered})
    assert forged.status_code == 303 and forged.headers["location"].startswith("/portal/signin")

    token = present(
        re.search(r'name="csrf_token" value="([^"]+)"', http.get("/portal/devices").text)
    ).group(1)
    assert http.post("/portal/signout", data={"csrf_token": token}).status_code == 303
    replayed = httpx.get(f"{server.url}/portal/devices", cookies=stolen)
    assert replayed.status_code == 303  # signing out ended the session on the server too
    http.close()
