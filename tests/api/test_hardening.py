"""Attacks that reached a 500 before (the hardening issue), each now a clear 4xx on both backends."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from support.helpers import MakeMerchant, problem


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize("alg", ["RS256", "HS256", "none"])
def test_a_token_naming_another_algorithm_for_our_kid_is_401(
    api: httpx.Client, make_merchant: MakeMerchant, alg: str
) -> None:
    merchant = make_merchant()
    kid = api.get("/.well-known/jwks.json").json()["keys"][0]["kid"]
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": "x", "iss": "y", "exp": 4102444800}).encode())
    forged = f"{header}.{claims}.{b64url(b'x' * 256)}"
    answer = api.get("/merchant/charges", headers={"Authorization": f"Bearer {forged}"})
    problem(answer, 401, "unauthorized")
    assert merchant.http.get("/merchant/charges").status_code == 200  # real tokens still work


def cursor(*members: object) -> str:
    return b64url(json.dumps(list(members)).encode())


@pytest.mark.parametrize(
    "bad",
    [
        cursor("2025-01-01T00:00:00", "x"),  # naive
        cursor("2025-01-01", "x"),  # date only
        cursor("9999-12-31T23:59:59-23:59", "x"),  # past the end of time in UTC
        cursor("2025-01-01T00:00:00+00:00", 7),  # not an id
        cursor("2025-01-01T00:00:00+00:00", "a\u0000b"),  # NUL
        cursor("2025-01-01T00:00:00+00:00", ""),
        cursor(1, "x"),
        "%%%",
    ],
)
@pytest.mark.parametrize("path", ["/merchant/charges", "/merchant/devices", "/merchant/events"])
def test_a_malformed_list_cursor_is_400(make_merchant: MakeMerchant, path: str, bad: Any) -> None:
    merchant = make_merchant()
    body = problem(merchant.http.get(path, params={"cursor": bad}), 400, "invalid_request")
    assert body["errors"] == [{"field": "cursor", "message": "not a cursor"}]
