"""Domain errors and their one mapping to RFC 9457 problem+json (PROTOCOL §1).

Services raise these; only :func:`problem_response` turns them into HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from starlette.responses import Response

from viopay.metrics import count_problem

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ViopayError(Exception):
    """Base of every error that answers a request. ``detail`` never holds a secret."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    default_detail: ClassVar[str] = "an unexpected error occurred"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.default_detail
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] = {}
        super().__init__(self.detail)


class InvalidRequest(ViopayError):
    code, status, title, default_detail = (
        "invalid_request",
        400,
        "Invalid request",
        "the request is invalid",
    )

    def __init__(
        self, detail: str | None = None, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        if errors:
            self.extra["errors"] = errors


class MissingHeader(ViopayError):
    code, status, title = "missing_header", 400, "Missing header"

    def __init__(self, header: str) -> None:
        super().__init__(f"{header} header is required")


class InvalidHeader(ViopayError):
    code, status, title = "invalid_header", 400, "Invalid header"

    def __init__(self, header: str, why: str = "is malformed") -> None:
        super().__init__(f"{header} header {why}")


class Unauthorized(ViopayError):
    code, status, title, default_detail = (
        "unauthorized",
        401,
        "Unauthorized",
        "a valid Bearer token is required",
    )

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="viopay"'


class InvalidToken(ViopayError):
    code, status, title = "invalid_token", 401, "Invalid token"
    default_detail = "attestation token is invalid or expired"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Attestation realm="viopay"'


class TimestampOutOfWindow(ViopayError):
    code, status, title = "timestamp_out_of_window", 401, "Timestamp out of window"
    default_detail = "X-Timestamp must be within 300 s past and 60 s ahead of server time"


class AppVersionUnsupported(ViopayError):
    code, status, title = "app_version_unsupported", 426, "App version unsupported"

    def __init__(self, min_supported_version: str) -> None:
        super().__init__(
            f"this app version is below the minimum {min_supported_version}",
            min_supported_version=min_supported_version,
        )
        self.headers["Upgrade"] = f"Viopay-POS/{min_supported_version}"


class RateLimited(ViopayError):
    code, status, title, default_detail = (
        "rate_limited",
        429,
        "Too many requests",
        "rate limit reached",
    )

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, retry_after))


class ServiceUnavailable(ViopayError):
    code, status, title = "service_unavailable", 503, "Service unavailable"
    default_detail = "a backing service is unreachable; try again"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = "5"


class ServerBusy(ServiceUnavailable):
    """503 ``service_unavailable`` on the wire, like an outage, but a capacity limit: no pooled
    database or Redis connection came free in time, or PostgreSQL rolled a transaction back to
    end a conflict. Counted apart (``viopay_server_busy_total``), so an operator's outage alert
    does not fire on a burst."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the server is busy ({detail}); try again")


class DecryptionFailed(ViopayError):
    code, status, title = "decryption_failed", 400, "Decryption failed"
    default_detail = "the envelope could not be decrypted"


class UnknownKey(ViopayError):
    code, status, title = "unknown_key", 401, "Unknown key"
    default_detail = "X-Key-Id is not a key of this device"


class KeyRevoked(ViopayError):
    code, status, title = "key_revoked", 401, "Key revoked"
    default_detail = "the identity key was revoked"


class InvalidSignature(ViopayError):
    code, status, title = "invalid_signature", 401, "Invalid signature"
    default_detail = "signature does not match"


class NonceReused(ViopayError):
    code, status, title = "nonce_reused", 401, "Nonce reused"
    default_detail = "the nonce was already used"


class UnknownTerminal(ViopayError):
    code, status, title = "unknown_terminal", 401, "Unknown terminal"
    default_detail = "X-Terminal-Id is not a terminal"


class Forbidden(ViopayError):
    code, status, title = "forbidden", 403, "Forbidden"
    default_detail = "not allowed"


class SessionRequired(ViopayError):
    code, status, title = "session_required", 403, "Session required"
    default_detail = "initiate a merchant session with POST /session/initiate"


class DeviceDisabled(ViopayError):
    code, status, title = "device_disabled", 403, "Device disabled"
    default_detail = "the device is disabled"


class DeviceNotFound(ViopayError):
    code, status, title = "device_not_found", 404, "Device not found"
    default_detail = "the device was never provisioned"


class PairingCodeInvalid(ViopayError):
    code, status, title = "pairing_code_invalid", 404, "Pairing code invalid"
    default_detail = "the pairing code is unknown, expired or already used"


class NotFound(ViopayError):
    code, status, title = "not_found", 404, "Not found"
    default_detail = "the resource does not exist"


class InvalidState(ViopayError):
    code, status, title = "invalid_state", 409, "Invalid state"
    default_detail = "the current state forbids this call"


class IdempotencyInProgress(ViopayError):
    code, status, title = "idempotency_in_progress", 409, "Idempotency key in progress"
    default_detail = "a request with this Idempotency-Key is running"


class ChargeNotCancelable(ViopayError):
    code, status, title = "charge_not_cancelable", 409, "Charge not cancelable"
    default_detail = "the charge cannot be canceled"


class ChargeNotRefundable(ViopayError):
    code, status, title = "charge_not_refundable", 409, "Charge not refundable"
    default_detail = "the charge cannot be refunded"


class MethodNotAllowed(ViopayError):
    code, status, title = "method_not_allowed", 405, "Method not allowed"
    default_detail = "this path does not take that method"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__()
        self.headers["Allow"] = ", ".join(allowed)


class PayloadTooLarge(ViopayError):
    code, status, title = "payload_too_large", 413, "Payload too large"
    default_detail = "the body is over 64 KiB"


class UnsupportedMediaType(ViopayError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"
    default_detail = "the body must be application/json"


class IdempotencyKeyReused(ViopayError):
    code, status, title = "idempotency_key_reused", 422, "Idempotency key reused"
    default_detail = "this Idempotency-Key was used with another request"


class KeyCheckFailed(ViopayError):
    code, status, title = "key_check_failed", 422, "Key check failed"
    default_detail = "the key check values do not match"


class RefundExceedsCharge(ViopayError):
    code, status, title = "refund_exceeds_charge", 422, "Refund exceeds charge"
    default_detail = "refunds would exceed the charged amount"


class InvalidCard(ViopayError):
    code, status, title = "invalid_card", 422, "Invalid card"
    default_detail = "the card is invalid"


class ProcessorError(ViopayError):
    code, status, title = "processor_error", 502, "Processor error"
    default_detail = "the payment processor failed"


class ProcessorTimeout(ViopayError):
    code, status, title = "processor_timeout", 504, "Processor timeout"
    default_detail = "the processor did not answer; the charge was reversed"


InternalError = ViopayError


def problem_body(
    *,
    code: str,
    status: int,
    title: str,
    detail: str,
    request_id: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:viopay:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if extra:
        body.update(extra)
    return body


def problem_response(error: ViopayError, request_id: str) -> Response:
    count_problem(error.code, busy=isinstance(error, ServerBusy))
    body = problem_body(
        code=error.code,
        status=error.status,
        title=error.title,
        detail=error.detail,
        request_id=request_id,
        extra=error.extra,
    )
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )
