"""OpenAPI helpers: the problem+json schema and the error responses of each endpoint."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_STATUS_TEXT = {
    304: "Not modified (If-None-Match matched)",
    400: "invalid_request, missing_header, invalid_header or decryption_failed",
    401: "unauthorized, invalid_token, unknown_key, key_revoked, timestamp_out_of_window, "
    "invalid_signature, nonce_reused or unknown_terminal",
    403: "forbidden, session_required or device_disabled",
    404: "device_not_found, pairing_code_invalid or not_found",
    405: "method_not_allowed",
    409: "invalid_state, idempotency_in_progress, charge_not_cancelable or charge_not_refundable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "idempotency_key_reused, key_check_failed, refund_exceeds_charge or invalid_card",
    426: "app_version_unsupported",
    429: "rate_limited (with Retry-After)",
    500: "internal_error",
    502: "processor_error",
    503: "service_unavailable (with Retry-After): the database or cache is unreachable",
    504: "processor_timeout",
}


class Problem(BaseModel):
    """RFC 9457 problem details (PROTOCOL §1)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str


def errors_for(*statuses: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status == 304:
            responses[status] = {"description": _STATUS_TEXT[status]}
            continue
        responses[status] = {
            "description": _STATUS_TEXT[status],
            "model": Problem,
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return responses


# --- the headers each operation needs (PROTOCOL §2), declared in one place ---------------------

_SEMVER = (
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
_PRINTABLE = r"^[\x21-\x7E]{1,128}$"


def _header(name: str, schema: dict[str, Any], description: str, *, required: bool = True) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": {"type": "string", **schema},
        "description": description,
    }


_DEVICE_ID = _header("X-Device-Id", {"pattern": r"^POS-[0-9A-F]{8}$"}, "the device (§2.1)")
_USER_AGENT = _header(
    "User-Agent",
    {"pattern": rf"^Viopay-POS/{_SEMVER} \([^;()]+; [^;()]+\)$"},
    "Viopay-POS/{semver} ({os}; {model}); the version at most 64 characters (§2.1)",
)
_CLIENT_TYPE = _header("X-Client-Type", {"enum": ["pos"]}, "pos (§2.1)")
_SIGNATURE = [
    _header("X-Key-Id", {"pattern": _PRINTABLE}, "the key that signs (§2.2, §2.4)"),
    _header("X-Timestamp", {"format": "date-time"}, "RFC 3339; within -300 s/+60 s of the server"),
    _header("X-Nonce", {"pattern": r"^[A-Za-z0-9_-]{8,128}$"}, "single use in its scope"),
    _header(
        "X-Signature", {"pattern": r"^v1=[A-Za-z0-9+/]{43}=$"}, "v1= base64 HMAC-SHA256 (§2.2)"
    ),
]
_ACTIVATION = [_DEVICE_ID, _USER_AGENT, _CLIENT_TYPE]
_CHARGE = [
    _header("X-Terminal-Id", {"pattern": _PRINTABLE}, "the terminal (§2.4)"),
    *_SIGNATURE,
    _CLIENT_TYPE,
    _USER_AGENT,
]
_IDEMPOTENCY_KEY = _header(
    "Idempotency-Key", {"pattern": r"^[\x21-\x7E]{1,255}$"}, "§4.5", required=False
)
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "§2.5"},
    "attestation": {
        "type": "http",
        "scheme": "Attestation",
        "description": "Authorization: Attestation att_… (§2.3)",
    },
}
_TOKEN_PATHS = ("/pos/keys", "/pos/config", "/pos/terminal-parameters", "/pos/activate")
_SIGNED_PATHS = ("/pos/attest",)
_PAIRING_PATHS = ("/pos/pairing-code", "/pos/status")
_BEARER_PREFIXES = ("/pos/claim", "/session/", "/merchant/", "/admin/")


def _needs(path: str, method: str, *, pairing_signed: bool) -> tuple[list[Any], str | None]:
    """The header parameters and the security scheme of one operation (§2)."""
    if path == "/pos/bootstrap":
        return _ACTIVATION, None
    if path in _PAIRING_PATHS:
        return _ACTIVATION + (_SIGNATURE if pairing_signed else []), None
    if path in _SIGNED_PATHS:
        return _ACTIVATION + _SIGNATURE, None
    if path in _TOKEN_PATHS:
        return [_DEVICE_ID], "attestation"
    if path.startswith("/pos/charge") or path == "/pos/heartbeat":
        return _CHARGE + ([_IDEMPOTENCY_KEY] if method == "post" else []), None
    if path.startswith(_BEARER_PREFIXES):
        return [], "bearer"
    return [], None


def declare_headers(schema: dict[str, Any], *, pairing_signed: bool) -> None:
    """Add to every operation of ``schema`` the headers it needs and its security scheme."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            headers, scheme = _needs(path, method, pairing_signed=pairing_signed)
            if headers:
                operation["parameters"] = [*operation.get("parameters", []), *headers]
            if scheme:
                operation["security"] = [{scheme: []}]
