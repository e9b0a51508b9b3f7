"""Portal sign-in through Keycloak: the authorization-code flow with PKCE, in a real browser.

Keycloak is an external system; a small stand-in realm on 127.0.0.1 answers discovery, the
authorization endpoint (it signs the user in at once), the token endpoint (it checks the PKCE
verifier, the client secret and the redirect URI), the JWKS and the logout endpoint. The server
runs as users run it, with VIOPAY_OIDC_ISSUER pointing there.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Page, expect

from support.helpers import SEEN_SECRETS, SERVER_LOGS, free_port
from support.portal_kit import shot

CLIENT_ID = "viopay-portal"
CLIENT_SECRET = "portal-secret-" + secrets.token_hex(8)
SEEN_SECRETS.add(CLIENT_SECRET)


class Realm:
    """A stand-in for a Keycloak realm."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/realms/viopay"
        self.codes: dict[str, dict[str, str]] = {}
        self.user = {"sub": "kc-" + secrets.token_hex(6), "email": "maria@corner.example"}
        self.token_requests: list[dict[str, str]] = []
        self.logged_out = False
        self.access_ttl = 300
        self.refuse_refresh = False
        self.sessions: dict[str, str] = {}  # refresh token → sid: a refresh keeps the session

    def sign(self, claims: dict[str, Any], ttl: int = 300) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "nbf": now - 5, "exp": now + ttl} | claims
        token = jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "realm-key"})
        SEEN_SECRETS.add(token)
        return token

    def admin_token(self) -> str:
        return self.sign(
            {
                "aud": "viopay",
                "sub": "ops",
                "sid": secrets.token_hex(8),
                "realm_access": {"roles": ["viopay-admin"]},
            }
        )

    def tokens(self, nonce: str, sid: str) -> dict[str, Any]:
        refresh = "rt-" + secrets.token_urlsafe(16)
        SEEN_SECRETS.add(refresh)
        self.sessions[refresh] = sid
        return {
            "access_token": self.sign(
                {
                    "aud": ["viopay", "account"],
                    "azp": CLIENT_ID,
                    "sub": self.user["sub"],
                    "sid": sid,
                    "typ": "Bearer",
                    "realm_access": {"roles": ["offline_access"]},
                },
                ttl=self.access_ttl,
            ),
            "id_token": self.sign(
                {
                    "aud": CLIENT_ID,
                    "sub": self.user["sub"],
                    "nonce": nonce,
                    "sid": sid,
                    "email": self.user["email"],
                }
            ),
            "refresh_token": refresh,
            "expires_in": 300,
            "refresh_expires_in": 1800,
            "token_type": "Bearer",
        }

    def handler(self) -> type[BaseHTTPRequestHandler]:
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _json(self, status: int, body: dict[str, Any]) -> None:
                raw = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _redirect(self, url: str) -> None:
                self.send_response(302)
                self.send_header("Location", url)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                base = "/realms/viopay"
                if url.path == f"{base}/.well-known/openid-configuration":
                    endpoints = f"{realm.issuer}/protocol/openid-connect"
                    self._json(
                        200,
                        {
                            "issuer": realm.issuer,
                            "authorization_endpoint": f"{endpoints}/auth",
                            "token_endpoint": f"{endpoints}/token",
                            "jwks_uri": f"{endpoints}/certs",
                            "end_session_endpoint": f"{endpoints}/logout",
                        },
                    )
                elif url.path == f"{base}/protocol/openid-connect/certs":
                    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(realm.key.public_key(), as_dict=True)
                    self._json(
                        200, {"keys": [jwk | {"kid": "realm-key", "use": "sig", "alg": "RS256"}]}
                    )
                elif url.path == f"{base}/protocol/openid-connect/auth":
                    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
                    assert query["code_challenge_method"] == "S256" and "openid" in query["scope"]
                    code = secrets.token_urlsafe(16)
                    realm.codes[code] = query
                    self._redirect(
                        f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
                    )
                elif url.path == f"{base}/protocol/openid-connect/logout":
                    realm.logged_out = True
                    self._redirect(query["post_logout_redirect_uri"])
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                form = {
                    k: v[0]
                    for k, v in parse_qs(
                        self.rfile.read(int(self.headers["Content-Length"])).decode()
                    ).items()
                }
                realm.token_requests.append(form)
                if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                    self._json(401, {"error": "unauthorized_client"})
                elif form.get("grant_type") == "authorization_code":
                    asked = realm.codes.pop(form.get("code", ""), None)
                    challenge = (
                        base64.urlsafe_b64encode(
                            hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                        )
                        .rstrip(b"=")
                        .decode()
                    )
                    if (
                        asked is None
                        or asked["redirect_uri"] != form.get("redirect_uri")
                        or asked["code_challenge"] != challenge
                    ):
                        self._json(400, {"error": "invalid_grant"})
                    else:
                        self._json(200, realm.tokens(asked["nonce"], sid=secrets.token_hex(8)))
                elif form.get("grant_type") == "refresh_token":
                    sid = realm.sessions.pop(form.get("refresh_token", ""), None)
                    if sid is None or realm.refuse_refresh:
                        self._json(400, {"error": "invalid_grant"})
                    else:
                        self._json(200, realm.tokens("", sid=sid))
                else:
                    self._json(400, {"error": "unsupported_grant_type"})

        return Handler


@pytest.fixture(scope="module")
def realm() -> Iterator[Realm]:
    realm = Realm()
    httpd = ThreadingHTTPServer(("127.0.0.1", realm.port), realm.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield realm
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def sso_server(realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``viopay serve`` on the embedded default, with Keycloak (the stand-in) configured."""
    directory = tmp_path_factory.mktemp("portal-sso")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    SERVER_LOGS.append(log_path)
    env = {
        **os.environ,
        "VIOPAY_DATA_DIR": str(directory / "var"),
        "VIOPAY_OIDC_ISSUER": realm.issuer,
        "VIOPAY_OIDC_CLIENT_ID": CLIENT_ID,
        "VIOPAY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "VIOPAY_PUBLIC_URL": url,
        "VIOPAY_LOG_LEVEL": "debug",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "viopay", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=15)


def test_sign_in_with_keycloak_uses_the_code_flow_with_pkce(
    realm: Realm, sso_server: str, page: Page
) -> None:
    operator = httpx.Client(
        base_url=sso_server, headers={"Authorization": f"Bearer {realm.admin_token()}"}
    )
    merchant = operator.post("/admin/merchants", json={"name": "Corner Coffee"}).json()
    added = operator.post(
        f"/admin/merchants/{merchant['merchant_id']}/members",
        json={"subject": realm.user["sub"], "role": "owner"},
    )
    assert added.status_code == 201, added.text
    operator.close()

    # A callback this browser did not start (a code fed to it by someone else) is refused.
    page.goto(f"{sso_server}/portal/auth/callback?code=stolen&state=forged")
    page.wait_for_url(re.compile(r"/portal/signin$"))
    expect(page.locator(".flash-info")).to_contain_text("expired or was not started here")

    page.goto(f"{sso_server}/portal/devices")
    page.wait_for_url(re.compile(r"/portal/signin\?next="))
    expect(page.locator("#email")).to_have_count(0)  # no password form: people sign in at Keycloak
    shot(page, "sso", "signin")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url(re.compile(re.escape(sso_server) + r"/portal/devices$"))
    expect(page.get_by_test_id("signed-in-as")).to_have_text(realm.user["email"])
    expect(page.locator(".topbar")).to_contain_text("Corner Coffee")
    shot(page, "sso", "devices")

    exchange = realm.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["redirect_uri"] == f"{sso_server}/portal/auth/callback"
    assert len(exchange["code_verifier"]) >= 43  # PKCE (RFC 7636)

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/portal/signin$"))
    assert realm.logged_out  # and signed out of Keycloak too
    page.goto(f"{sso_server}/portal/devices")
    page.wait_for_url(re.compile(r"/portal/signin\?next="))


def test_short_access_tokens_are_refreshed_and_a_refused_refresh_signs_out(
    realm: Realm, sso_server: str, page: Page
) -> None:
    operator = httpx.Client(
        base_url=sso_server, headers={"Authorization": f"Bearer {realm.admin_token()}"}
    )
    merchant = operator.post("/admin/merchants", json={"name": "Refresh Roasters"}).json()
    realm.user = {"sub": "kc-" + secrets.token_hex(6), "email": "lee@roasters.example"}
    operator.post(
        f"/admin/merchants/{merchant['merchant_id']}/members",
        json={"subject": realm.user["sub"], "role": "admin"},
    )
    operator.close()
    realm.access_ttl = 3  # inside the portal's 30 s margin: every request refreshes
    try:
        page.goto(f"{sso_server}/portal/signin")
        page.get_by_role("link", name="Sign in with single sign-on").click()
        page.wait_for_url(re.compile(r"/portal/devices$"))
        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="Settings")).to_be_visible()
        assert realm.token_requests[-1]["grant_type"] == "refresh_token"
        # The merchant session lasts as long as the token it was made with (PROTOCOL §2.5): once
        # it is gone, the portal initiates it again for the merchant picked last.
        time.sleep(3.5)
        page.get_by_role("link", name="Charges").click()
        expect(page.get_by_role("heading", name="Charges", exact=True)).to_be_visible()
        expect(page.locator(".topbar")).to_contain_text("Refresh Roasters")

        realm.refuse_refresh = True  # Keycloak ended the session
        page.get_by_role("link", name="Activity").click()
        page.wait_for_url(re.compile(r"/portal/signin\?next=%2Fportal%2Fevents$"))
        expect(page.locator(".flash-info")).to_contain_text("Your session has expired")
    finally:
        realm.access_ttl, realm.refuse_refresh = 300, False


def test_password_sign_in_is_off_when_keycloak_is_configured(sso_server: str) -> None:
    http = httpx.Client(base_url=sso_server, follow_redirects=False)
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/portal/signin").text)
    assert token is None  # the sign-in page has no form at all
    http.close()
