"""Portal input that once answered 500 (found by fuzzing the portal, which /openapi.json does
not describe, so the schema fuzzing never reached it): each is now a clear refusal."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from support.helpers import Admin, Backend, Server
from support.oidc_kit import OidcStack, oidc_stack

SignIn = Callable[[str], httpx.Client]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token"\s+value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"\s+name="csrf_token"', html
    )
    assert match, html[:500]
    return match.group(1)


@pytest.fixture
def signed_in(server: Server, admin: Admin) -> Iterator[SignIn]:
    """A portal browser (httpx, cookies kept) signed in as an owner API client of a new
    merchant in ``timezone``."""
    opened: list[httpx.Client] = []

    def sign_in(timezone: str) -> httpx.Client:
        merchant = admin.merchant(timezone=timezone)
        client = admin.client(merchant_id=merchant["merchant_id"], role="owner")
        http = httpx.Client(base_url=server.url, timeout=30)
        opened.append(http)
        form = {
            "mode": "client",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "csrf_token": csrf_of(http.get("/portal/signin?as=client").text),
        }
        assert http.post("/portal/signin", data=form).status_code == 303
        return http

    yield sign_in
    for http in opened:
        http.close()


def test_a_form_from_an_origin_that_is_no_url_is_refused(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = csrf_of(http.get("/portal/signin").text)
        answer = http.post(
            "/portal/signin",
            data={"email": "a@b.c", "password": "x", "csrf_token": token},
            headers={"Origin": "http://[::1"},
        )
    assert answer.status_code == 403, answer.text
    assert "not sent from this portal" in answer.text


@pytest.mark.parametrize(
    ("query", "timezone"), [("to=9999-12-31", "UTC"), ("from=0001-01-01", "Asia/Tokyo")]
)
def test_days_out_of_range_are_asked_again(signed_in: SignIn, query: str, timezone: str) -> None:
    http = signed_in(timezone)
    page = http.get(f"/portal/charges?{query}")
    assert page.status_code == 400 and "from 1970-01-01 to 9998-12-31" in page.text
    # The export never starts a download it cannot finish: it sends the filters back.
    export = http.get(f"/portal/charges/export?{query}")
    assert export.status_code == 303
    assert export.headers["location"].startswith("/portal/charges?")


@pytest.mark.parametrize(
    ("name", "typed"),
    [("tax.rate", "sNaN"), ("surcharge.rate", "1e999999999"), ("tip.percentages", "\u00b2")],
)
def test_config_numbers_no_form_can_hold_are_asked_again(
    signed_in: SignIn, name: str, typed: str
) -> None:
    http = signed_in("UTC")
    form = {
        "tip.percentages": "15, 18, 20",
        "tax.rate": "0",
        "surcharge.rate": "0",
        "surcharge.max_amount": "0",
        "branding.display_name": "Cafe",
        "branding.primary_color": "#1A73E8",
        "csrf_token": csrf_of(http.get("/portal/config").text),
    }
    answer = http.post("/portal/config", data=form | {name: typed})
    assert answer.status_code == 400, answer.text
    assert f'id="err-{name.replace(".", "-")}"' in answer.text  # the field says what is wrong


@pytest.fixture(scope="module")
def stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    yield from oidc_stack(backend, tmp_path_factory.mktemp(f"hostile-oidc-{backend.name}"))


@pytest.mark.parametrize("state", ["%C3%A9", "%FF", "forged"])
def test_a_callback_with_a_state_not_ours_is_refused(stack: OidcStack, state: str) -> None:
    """Non-ASCII ``state`` once raised in the constant-time comparison (a 500)."""
    with httpx.Client(base_url=stack.server.url, timeout=30) as http:
        assert http.get("/portal/auth/login").status_code == 303
        answer = http.get(f"/portal/auth/callback?state={state}&code=x")
    assert answer.status_code == 303 and answer.headers["location"] == "/portal/signin"
