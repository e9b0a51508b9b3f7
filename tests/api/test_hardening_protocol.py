"""PROTOCOL §1 v1.1: a 405 names what the path takes (``Allow``), ``HEAD`` works wherever
``GET`` does, and the OpenAPI document declares every header an operation needs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support.helpers import MakeMerchant, problem


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/pos/bootstrap", "POST"),
        ("GET", "/pos/pairing-code", "POST"),
        ("POST", "/pos/status", "GET, HEAD"),
        ("DELETE", "/merchant/config", "GET, HEAD, PUT"),
        ("PUT", "/merchant/devices/POS-00000000", "GET, HEAD, PATCH"),
        ("PUT", "/pos/charge/reverse", "GET, HEAD, POST"),  # GET: /pos/charge/{charge_id}
    ],
)
def test_a_405_carries_allow(api: httpx.Client, method: str, path: str, allow: str) -> None:
    answer = api.request(method, path)
    problem(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == allow


def test_head_works_wherever_get_does(api: httpx.Client, make_merchant: MakeMerchant) -> None:
    for path in ("/healthz", "/readyz", "/.well-known/jwks.json", "/openapi.json"):
        got, head = api.get(path), api.head(path)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers["content-type"] == got.headers["content-type"]
    merchant = make_merchant()
    listed = merchant.http.head("/merchant/charges")
    assert (listed.status_code, listed.content) == (200, b"")
    assert api.head("/merchant/charges").status_code == 401  # still authenticated
    refused = api.head("/pos/bootstrap")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"


def test_an_unknown_path_is_404_whatever_the_method(api: httpx.Client) -> None:
    for method in ("GET", "HEAD", "POST", "DELETE"):
        assert api.request(method, "/pos/nothing-here").status_code == 404


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = spec["paths"][path][method]
    return operation


def _headers(operation: dict[str, Any]) -> dict[str, bool]:
    return {
        p["name"]: p["required"] for p in operation.get("parameters", []) if p["in"] == "header"
    }


def test_the_document_declares_every_header_an_operation_needs(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    activation = {"X-Device-Id": True, "User-Agent": True, "X-Client-Type": True}
    signature = {"X-Key-Id": True, "X-Timestamp": True, "X-Nonce": True, "X-Signature": True}
    assert _headers(_operation(spec, "post", "/pos/bootstrap")) == activation
    for method, path in (
        ("post", "/pos/pairing-code"),
        ("get", "/pos/status"),
        ("post", "/pos/attest"),
    ):
        assert _headers(_operation(spec, method, path)) == activation | signature
    for path in ("/pos/keys", "/pos/config", "/pos/terminal-parameters", "/pos/activate"):
        operation = _operation(spec, "post", path)
        assert _headers(operation) == {"X-Device-Id": True}
        assert operation["security"] == [{"attestation": []}]
    charge = _headers(_operation(spec, "post", "/pos/charge"))
    assert charge == signature | {
        "X-Terminal-Id": True,
        "X-Client-Type": True,
        "User-Agent": True,
        "Idempotency-Key": False,
    }
    assert "Idempotency-Key" not in _headers(_operation(spec, "get", "/pos/charge/{charge_id}"))
    for method, path in (
        ("post", "/pos/claim"),
        ("get", "/merchant/charges"),
        ("post", "/admin/devices"),
    ):
        assert _operation(spec, method, path)["security"] == [{"bearer": []}]
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "attestation"}


def test_the_document_agrees_with_the_validators(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    claim = _operation(spec, "post", "/pos/claim")["requestBody"]["content"]["application/json"]
    schema = claim["schema"]
    assert schema["required"] == ["pairing_code"]
    assert schema["properties"]["pairing_code"]["type"] == "string"
    ids = [
        p
        for operation in (
            _operation(spec, "get", "/merchant/charges/{charge_id}"),
            _operation(spec, "post", "/pos/charge/{charge_id}/refund"),
            _operation(spec, "post", "/admin/devices/{device_id}/disable"),
        )
        for p in operation["parameters"]
        if p["in"] == "path"
    ]
    assert all(p["schema"]["maxLength"] == 128 for p in ids)
