"""Exceptions raised by the device SDK.

Everything the SDK raises on purpose derives from :class:`DeviceError`::

    DeviceError
    ├── NetworkError              no answer from the server (wraps httpx.TransportError)
    ├── OutcomeUnknown            a state-changing charge call never got a trustworthy answer
    ├── PairingCodeExpired        the pairing code died before a merchant claimed the device
    ├── NotActivated              no usable key set or terminal id on this device yet
    ├── WebhookVerificationError  a webhook's signature or timestamp did not verify
    ├── ProtocolError             the server answered something the SDK cannot trust or parse
    │   ├── ResponseIntegrityError    an envelope, chunk or digest failed to verify
    │   └── KeyCheckMismatch          a delivered key does not match its KCV (or its block)
    └── APIError                  the server answered with application/problem+json
        ├── BadRequest (400)          ValidationError (invalid_request, with .errors)
        ├── AuthenticationError (401) InvalidToken, TimestampOutOfWindow (.server_time)
        ├── PermissionDenied (403)    DeviceDisabled
        ├── NotFound (404)            DeviceNotFound, PairingCodeInvalid
        ├── Conflict (409)            InvalidState, IdempotencyInProgress,
        │                             ChargeNotCancelable, ChargeNotRefundable
        ├── Unprocessable (422)       IdempotencyConflict, KeyCheckFailed,
        │                             RefundExceedsCharge, InvalidCard
        ├── AppVersionUnsupported (426, .min_supported_version)
        ├── RateLimited (429, .retry_after)
        └── ServerError (5xx)         ProcessorError, ServiceUnavailable (.retry_after),
                                      ProcessorTimeout (.charge_id)

No message or repr ever holds a key, a secret, a token, a PAN or a PIN: server problems carry
none by protocol (PROTOCOL.md §1), and the SDK's own messages name only types and ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from viopay_device.models import Reversal

__all__ = [
    "APIError",
    "AppVersionUnsupported",
    "AuthenticationError",
    "BadRequest",
    "ChargeNotCancelable",
    "ChargeNotRefundable",
    "Conflict",
    "DeviceDisabled",
    "DeviceNotFound",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "InvalidCard",
    "InvalidState",
    "InvalidToken",
    "KeyCheckFailed",
    "KeyCheckMismatch",
    "NetworkError",
    "NotActivated",
    "NotFound",
    "OutcomeUnknown",
    "PairingCodeExpired",
    "PairingCodeInvalid",
    "PermissionDenied",
    "ProcessorError",
    "ProcessorTimeout",
    "ProtocolError",
    "RateLimited",
    "RefundExceedsCharge",
    "ResponseIntegrityError",
    "ServerError",
    "ServiceUnavailable",
    "TimestampOutOfWindow",
    "Unprocessable",
    "ValidationError",
    "DeviceError",
    "WebhookVerificationError",
    "error_from_response",
]


class DeviceError(Exception):
    """Base of every exception the device SDK raises on purpose."""


class NetworkError(DeviceError):
    """The server could not be reached or did not answer (the cause is an httpx.TransportError)."""


class PairingCodeExpired(DeviceError):
    """The pairing code expired (or was replaced) before the device was claimed."""


class NotActivated(DeviceError):
    """The call needs an activated key set (or a terminal id) that this device does not have."""


class WebhookVerificationError(DeviceError):
    """A webhook is not from Viopay (bad or missing signature), or too old or new to trust."""


class ProtocolError(DeviceError):
    """The server's answer is malformed or inconsistent with PROTOCOL.md."""


class ResponseIntegrityError(ProtocolError):
    """A response envelope, chunk or digest failed to verify: the answer cannot be trusted."""


class KeyCheckMismatch(ProtocolError):
    """A delivered key failed to unwrap as its type or does not match the KCV the server sent."""

    def __init__(self, key_type: str, reason: str = "KCV does not match") -> None:
        super().__init__(f"key {key_type}: {reason}")
        self.key_type = key_type


class OutcomeUnknown(DeviceError):
    """A charge-family call never got a trustworthy answer; it may or may not have happened.

    ``idempotency_key`` is the key the call was sent with: repeating the call with it is safe.
    For :meth:`DeviceClient.charge` the SDK has already asked the server to reverse whatever
    that key created: ``reversal`` holds the answer, or ``reversal_error`` why there is none.
    """

    def __init__(
        self,
        operation: str,
        idempotency_key: str,
        *,
        reversal: Reversal | None = None,
        reversal_error: DeviceError | None = None,
    ) -> None:
        if reversal is not None:
            outcome = "reversed by its idempotency key"
        elif reversal_error is not None:
            outcome = "the reversal failed too"
        else:
            outcome = "repeat it with the same idempotency key"
        super().__init__(f"{operation}: outcome unknown; {outcome}")
        self.operation = operation
        self.idempotency_key = idempotency_key
        self.reversal = reversal
        self.reversal_error = reversal_error


class APIError(DeviceError):
    """The server answered with an error (RFC 9457 problem details).

    ``status`` is the HTTP status, ``code`` the problem's ``code`` member (None when the answer
    was not problem+json), ``problem`` the whole parsed body, ``request_id`` the server's
    ``X-Request-Id``.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        problem: Mapping[str, Any],
        request_id: str | None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        detail = problem.get("detail")
        self.status = status
        self.code = code
        self.problem = dict(problem)
        self.request_id = request_id
        self.detail = detail if isinstance(detail, str) else None
        text = f"{status} {code or 'error'}"
        if self.detail:
            text += f": {self.detail}"
        if request_id:
            text += f" (request {request_id})"
        super().__init__(text)
        self._init_extra(headers or {})

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        """Hook for subclasses that read extra problem members or headers."""


class BadRequest(APIError):
    """400: a malformed request, header or envelope."""


class ValidationError(BadRequest):
    """400 invalid_request; ``errors`` lists ``{"field", "message"}`` items."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        errors = self.problem.get("errors")
        self.errors: list[dict[str, Any]] = (
            [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        )


class AuthenticationError(APIError):
    """401: token, key, signature, nonce, timestamp or terminal not accepted."""


class InvalidToken(AuthenticationError):
    """401 invalid_token: the attestation token is unknown, expired or bound elsewhere."""


class TimestampOutOfWindow(AuthenticationError):
    """401 timestamp_out_of_window; ``server_time`` tells how far off the device clock is."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        self.server_time: datetime | None = None
        raw = self.problem.get("server_time")
        if isinstance(raw, str):
            try:
                self.server_time = datetime.fromisoformat(raw)
            except ValueError:
                self.server_time = None


class PermissionDenied(APIError):
    """403: authenticated but not allowed."""


class DeviceDisabled(PermissionDenied):
    """403 device_disabled."""


class NotFound(APIError):
    """404: the resource does not exist (for this caller)."""


class DeviceNotFound(NotFound):
    """404 device_not_found: this device id was never provisioned."""


class PairingCodeInvalid(NotFound):
    """404 pairing_code_invalid."""


class Conflict(APIError):
    """409: the state of the device, key set or charge forbids the call."""


class InvalidState(Conflict):
    """409 invalid_state (``detail`` names the state)."""


class IdempotencyInProgress(Conflict):
    """409 idempotency_in_progress: a request with the same key is still running."""


class ChargeNotCancelable(Conflict):
    """409 charge_not_cancelable."""


class ChargeNotRefundable(Conflict):
    """409 charge_not_refundable."""


class Unprocessable(APIError):
    """422: the request is well formed but cannot be carried out."""


class IdempotencyConflict(Unprocessable):
    """422 idempotency_key_reused: the key was used before with a different request."""


class KeyCheckFailed(Unprocessable):
    """422 key_check_failed: the server rejected the activation KCVs."""


class RefundExceedsCharge(Unprocessable):
    """422 refund_exceeds_charge."""


class InvalidCard(Unprocessable):
    """422 invalid_card."""


class AppVersionUnsupported(APIError):
    """426 app_version_unsupported; ``min_supported_version`` is the version to upgrade to."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        raw = self.problem.get("min_supported_version")
        self.min_supported_version: str | None = raw if isinstance(raw, str) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


class RateLimited(APIError):
    """429 rate_limited; ``retry_after`` is the server's Retry-After in seconds, if sent."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        self.retry_after = _retry_after(headers)


class ServerError(APIError):
    """5xx: the server or its processor failed."""


class ProcessorError(ServerError):
    """502 processor_error: the processor failed; no charge was made."""


class ServiceUnavailable(ServerError):
    """503 service_unavailable; ``retry_after`` in seconds, if sent."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        self.retry_after = _retry_after(headers)


class ProcessorTimeout(ServerError):
    """504 processor_timeout: the processor did not answer and the charge was reversed."""

    def _init_extra(self, headers: Mapping[str, str]) -> None:
        raw = self.problem.get("charge_id")
        self.charge_id: str | None = raw if isinstance(raw, str) else None


_BY_CODE: dict[str, type[APIError]] = {
    "invalid_request": ValidationError,
    "invalid_token": InvalidToken,
    "timestamp_out_of_window": TimestampOutOfWindow,
    "device_disabled": DeviceDisabled,
    "device_not_found": DeviceNotFound,
    "pairing_code_invalid": PairingCodeInvalid,
    "invalid_state": InvalidState,
    "idempotency_in_progress": IdempotencyInProgress,
    "charge_not_cancelable": ChargeNotCancelable,
    "charge_not_refundable": ChargeNotRefundable,
    "idempotency_key_reused": IdempotencyConflict,
    "key_check_failed": KeyCheckFailed,
    "refund_exceeds_charge": RefundExceedsCharge,
    "invalid_card": InvalidCard,
    "app_version_unsupported": AppVersionUnsupported,
    "rate_limited": RateLimited,
    "processor_error": ProcessorError,
    "service_unavailable": ServiceUnavailable,
    "processor_timeout": ProcessorTimeout,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    426: AppVersionUnsupported,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response, chosen by its problem ``code``, then its status."""
    problem = _problem_of(response)
    raw_code = problem.get("code")
    code = raw_code if isinstance(raw_code, str) else None
    status = response.status_code
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(
        status,
        code,
        problem,
        response.headers.get("x-request-id"),
        headers=response.headers,
    )
