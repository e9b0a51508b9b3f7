"""The Viopay device SDK: what a POS terminal's firmware uses to talk to the Viopay server.

Written from PROTOCOL.md alone. Typical use::

    store = MemoryKeyStore.from_hex("device-id-key-2025-01", identity_secret_hex)
    with DeviceClient("https://pos.viopay.example", device_id="POS-8F3A2C91",
                      key_store=store) as client:
        activate_device(client, on_step=print)
        charge = client.charge(amount=1250, currency="USD", entry_mode="chip",
                               card={"pan": pan, "expiry": "2812"})

Every exception derives from :class:`DeviceError` (see :mod:`viopay_device.errors` for the
tree). Signing lives in ``httpx.Auth`` classes; the transport is injectable.
"""

from viopay_device.activation import ActivationResult, StepReport, activate_device
from viopay_device.auth import (
    ActivationHeaders,
    AttestationSignature,
    AttestationToken,
    ChargeSignature,
)
from viopay_device.client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    DeviceClient,
)
from viopay_device.errors import (
    APIError,
    AppVersionUnsupported,
    AuthenticationError,
    BadRequest,
    ChargeNotCancelable,
    ChargeNotRefundable,
    Conflict,
    DeviceDisabled,
    DeviceError,
    DeviceNotFound,
    IdempotencyConflict,
    IdempotencyInProgress,
    InvalidCard,
    InvalidState,
    InvalidToken,
    KeyCheckFailed,
    KeyCheckMismatch,
    NetworkError,
    NotActivated,
    NotFound,
    OutcomeUnknown,
    PairingCodeExpired,
    PairingCodeInvalid,
    PermissionDenied,
    ProcessorError,
    ProcessorTimeout,
    ProtocolError,
    RateLimited,
    RefundExceedsCharge,
    ResponseIntegrityError,
    ServerError,
    ServiceUnavailable,
    TimestampOutOfWindow,
    Unprocessable,
    ValidationError,
    WebhookVerificationError,
)
from viopay_device.heartbeat import DEFAULT_HEARTBEAT_INTERVAL, HeartbeatSchedule
from viopay_device.keystore import IdentityKey, KeySet, KeyStore, MemoryKeyStore
from viopay_device.models import (
    Activation,
    Attestation,
    Bootstrap,
    CardSummary,
    Charge,
    Config,
    DeviceStatus,
    Heartbeat,
    MerchantRef,
    PairingCode,
    Refund,
    Reversal,
    TerminalParameters,
)
from viopay_device.webhooks import verify_webhook

__all__ = [
    # client and flow
    "DeviceClient",
    "activate_device",
    "ActivationResult",
    "StepReport",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BACKOFF",
    # signing
    "ActivationHeaders",
    "AttestationSignature",
    "AttestationToken",
    "ChargeSignature",
    # keys
    "IdentityKey",
    "KeySet",
    "KeyStore",
    "MemoryKeyStore",
    # answers
    "Activation",
    "Attestation",
    "Bootstrap",
    "CardSummary",
    "Charge",
    "Config",
    "DeviceStatus",
    "MerchantRef",
    "PairingCode",
    "Refund",
    "Reversal",
    "TerminalParameters",
    # heartbeat
    "HeartbeatSchedule",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "Heartbeat",
    # merchants' servers
    "verify_webhook",
    "WebhookVerificationError",
    # errors
    "DeviceError",
    "NetworkError",
    "OutcomeUnknown",
    "PairingCodeExpired",
    "NotActivated",
    "ProtocolError",
    "ResponseIntegrityError",
    "KeyCheckMismatch",
    "APIError",
    "BadRequest",
    "ValidationError",
    "AuthenticationError",
    "InvalidToken",
    "TimestampOutOfWindow",
    "PermissionDenied",
    "DeviceDisabled",
    "NotFound",
    "DeviceNotFound",
    "PairingCodeInvalid",
    "Conflict",
    "InvalidState",
    "IdempotencyInProgress",
    "ChargeNotCancelable",
    "ChargeNotRefundable",
    "Unprocessable",
    "IdempotencyConflict",
    "KeyCheckFailed",
    "RefundExceedsCharge",
    "InvalidCard",
    "AppVersionUnsupported",
    "RateLimited",
    "ServerError",
    "ProcessorError",
    "ServiceUnavailable",
    "ProcessorTimeout",
]
