"""Bad input is always a 4xx (PROTOCOL §1): JSON nested deeper than 32 levels, a U+0000 in a
JSON string, a header or a path, strings longer than their field, ids in paths that cannot
exist. Each test reproduces an attack that answered 500 before (PostgreSQL refuses NUL in text,
and the canonical JSON of the fingerprint recursed), on both backends."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
import orjson
import pytest

from support import charge_kit as kit
from support.helpers import UA, Admin, MakeMerchant, MerchantCtx, Server, pos_headers, problem
from viopay_device.protocol.envelope import request_aad, seal


def charges_of(merchant: MerchantCtx) -> list[dict[str, Any]]:
    answer = merchant.http.get("/merchant/charges")
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


# --- nesting --------------------------------------------------------------------------------


def deep_json(depth: int) -> bytes:
    """``depth`` nested arrays, written by hand (orjson refuses to write past 255)."""
    return b"[" * depth + b"]" * depth


def with_member(plaintext: dict[str, Any], name: str, raw: bytes) -> bytes:
    """The plaintext's JSON with one more member whose value is the raw JSON ``raw``."""
    return orjson.dumps(plaintext)[:-1] + b',"' + name.encode() + b'":' + raw + b"}"


def send_raw(
    terminal: kit.PosTerminal, path: str, plaintext: bytes, *, idempotency_key: str
) -> kit.Answer:
    """Seal exact plaintext bytes for ``path`` and send them signed."""
    keys = terminal.keys
    aad = request_aad(method="POST", path=path, subject=terminal.terminal_id)
    body = orjson.dumps(seal(keys.key("MSK"), keys.msk_kid, plaintext, aad))
    return terminal.send("POST", path, body=body, idempotency_key=idempotency_key)


@pytest.mark.parametrize("depth", [32, 990])  # + the plaintext object itself: 33 and 991
def test_a_deeply_nested_charge_plaintext_is_400(terminal: kit.PosTerminal, depth: int) -> None:
    plaintext = with_member(terminal.charge_plaintext(1250), "metadata", deep_json(depth))
    answer = send_raw(terminal, "/pos/charge", plaintext, idempotency_key="deep-1")
    assert answer.status == 400, answer.response.text
    assert answer.problem()["code"] == "invalid_request"
    assert charges_of(terminal.merchant) == []


def test_json_nested_32_levels_is_accepted(terminal: kit.PosTerminal) -> None:
    plaintext = with_member(
        terminal.charge_plaintext(1250), "metadata", b'{"a":' + deep_json(30) + b"}"
    )
    answer = send_raw(terminal, "/pos/charge", plaintext, idempotency_key="deep-ok")
    assert answer.status == 201, answer.response.text


def test_a_deeply_nested_refund_or_reverse_by_key_plaintext_is_400(
    terminal: kit.PosTerminal,
) -> None:
    charge = terminal.charge(1250).json()
    path = f"/pos/charge/{charge['id']}/refund"
    refund = send_raw(terminal, path, with_member({}, "x", deep_json(990)), idempotency_key="r")
    assert (refund.status, refund.problem()["code"]) == (400, "invalid_request")
    reverse = send_raw(
        terminal,
        "/pos/charge/reverse",
        with_member({"idempotency_key": "k"}, "x", deep_json(990)),
        idempotency_key="v",
    )
    assert (reverse.status, reverse.problem()["code"]) == (400, "invalid_request")
    assert terminal.refund(charge["id"], {}).status == 201


def test_a_deeply_nested_plain_json_body_is_400(api: httpx.Client) -> None:
    body = with_member({"client_id": "x", "client_secret": "y"}, "extra", deep_json(100))
    answer = api.post("/client/session", content=body, headers={"Content-Type": "application/json"})
    problem(answer, 400, "invalid_request")


# --- NUL ------------------------------------------------------------------------------------


def test_a_nul_in_a_client_id_is_400(api: httpx.Client) -> None:
    answer = api.post("/client/session", json={"client_id": "cl_\u0000", "client_secret": "x"})
    problem(answer, 400, "invalid_request")


def test_a_nul_in_a_merchant_id_or_name_is_400(admin: Admin, make_merchant: MakeMerchant) -> None:
    merchant = make_merchant()
    answer = merchant.http.post("/session/initiate", json={"merchant_id": "mer_\u0000"})
    problem(answer, 400, "invalid_request")
    problem(
        admin.http.post("/admin/merchants", json={"name": "Cafe\u0000"}), 400, "invalid_request"
    )
    problem(
        admin.http.post("/admin/merchants", json={"name": "Cafe", "x": {"k\u0000": 1}}),
        400,
        "invalid_request",
    )


def test_a_nul_in_an_envelope_kid_is_400(terminal: kit.PosTerminal) -> None:
    sealed = orjson.loads(terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext()))
    sealed["kid"] = "ks_\u0000"
    answer = terminal.send("POST", "/pos/charge", body=orjson.dumps(sealed), idempotency_key="n")
    assert (answer.status, answer.problem()["code"]) == (400, "invalid_request")


def test_a_nul_in_a_charge_reference_is_refused_before_the_processor(
    terminal: kit.PosTerminal,
) -> None:
    answer = terminal.charge(1250, reference="order\u0000", idempotency_key="nul-ref")
    assert (answer.status, answer.problem()["code"]) == (400, "invalid_request")
    assert charges_of(terminal.merchant) == []


@pytest.mark.parametrize(
    "path",
    [
        "/merchant/devices/POS-%00",
        "/merchant/charges/ch_%00",
        "/merchant/devices/POS-0000000%00/disable",
        "/merchant/charges?status=%00",
        "/merchant/charges?q=a%00",
        "/merchant/events?cursor=%00",
    ],
)
def test_a_nul_in_a_path_or_query_is_400(make_merchant: MakeMerchant, path: str) -> None:
    merchant = make_merchant()
    method = "POST" if path.endswith("/disable") else "GET"
    problem(merchant.http.request(method, path), 400, "invalid_request")


def test_a_nul_in_a_pos_charge_path_is_400(terminal: kit.PosTerminal) -> None:
    answer = terminal.send("POST", "/pos/charge/ch_%00/refund", {}, idempotency_key="nul-path")
    assert (answer.status, answer.problem()["code"]) == (400, "invalid_request")


def test_a_nul_in_an_admin_path_is_400(admin: Admin) -> None:
    problem(admin.http.post("/admin/devices/POS-%00/disable"), 400, "invalid_request")
    problem(
        admin.http.post("/admin/merchants/mer_%00/members", json={"subject": "u", "role": "staff"}),
        400,
        "invalid_request",
    )


# --- lengths --------------------------------------------------------------------------------


def test_a_user_agent_version_over_64_characters_is_400_on_bootstrap(admin: Admin) -> None:
    device = admin.provision()
    version = "1.0.0-" + "a" * 64
    ua = f"Viopay-POS/{version} (Android 12; PAX-A920)"
    answer = httpx.post(
        f"{admin.server.url}/pos/bootstrap", headers=pos_headers(device.device_id, ua=ua)
    )
    body = problem(answer, 400, "invalid_header")
    assert "User-Agent" in body["detail"]
    ok = httpx.post(f"{admin.server.url}/pos/bootstrap", headers=pos_headers(device.device_id))
    assert ok.status_code == 200 and UA


def test_a_user_agent_version_over_64_characters_is_400_on_charges(
    terminal: kit.PosTerminal,
) -> None:
    ua = "Viopay-POS/1.0.0+" + "b" * 64 + " (Android 12; PAX-A920)"
    answer = terminal.charge(1250, edit={"User-Agent": ua})
    assert (answer.status, answer.problem()["code"]) == (400, "invalid_header")


def test_a_refund_path_over_512_characters_is_404(terminal: kit.PosTerminal) -> None:
    long_id = "ch_" + "x" * 600
    answer = terminal.send("POST", f"/pos/charge/{long_id}/refund", {}, idempotency_key="long")
    assert (answer.status, answer.problem()["code"]) == (404, "not_found")
    for suffix in ("cancel", "reverse"):
        answer = terminal.send("POST", f"/pos/charge/{long_id}/{suffix}", idempotency_key="lg")
        assert (answer.status, answer.problem()["code"]) == (404, "not_found")
    assert terminal.get(long_id).status == 404


def test_an_id_in_a_path_longer_than_128_is_404(admin: Admin, make_merchant: MakeMerchant) -> None:
    merchant = make_merchant()
    long_id = "x" * 129
    problem(merchant.http.get(f"/merchant/devices/{long_id}"), 404, "not_found")
    problem(merchant.http.get(f"/merchant/charges/{long_id}"), 404, "not_found")
    problem(admin.http.post(f"/admin/devices/{long_id}/disable"), 404, "not_found")


def test_a_client_id_longer_than_128_is_400(api: httpx.Client) -> None:
    body = {"client_id": "c" * 129, "client_secret": secrets.token_hex(8)}
    problem(api.post("/client/session", json=body), 400, "invalid_request")


def test_a_label_over_64_characters_is_400(make_merchant: MakeMerchant) -> None:
    merchant = make_merchant()
    answer = merchant.http.post("/pos/claim", json={"pairing_code": "ABCDEF", "label": "x" * 65})
    problem(answer, 400, "invalid_request")


@pytest.mark.parametrize("field", ["email", "password"])
def test_a_nul_in_a_portal_form_is_400(server: Server, field: str) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as http:
        page = http.get("/portal/signin")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None
        form = {"csrf_token": found.group(1), "mode": "user", "email": "a@b.c", "password": "pw"}
        answer = http.post("/portal/signin", data=form | {field: "x\u0000y"})
        assert answer.status_code == 400, answer.text
