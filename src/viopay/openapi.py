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
