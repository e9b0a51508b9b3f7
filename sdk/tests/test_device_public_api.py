"""The public surface of viopay_device is exactly what __all__ lists, and stays so."""

import inspect

import viopay_device as sdk
from viopay_device import errors

EXPECTED = {
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
    "verify_webhook",
    "WebhookVerificationError",
    "HeartbeatSchedule",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "Heartbeat",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert len(sdk.__all__) == len(set(sdk.__all__)), "duplicates in __all__"
    assert set(sdk.__all__) == EXPECTED


def test_every_name_in_all_exists() -> None:
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_no_other_public_names_leak() -> None:
    public = {
        name
        for name, value in vars(sdk).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(sdk.__all__)


def test_every_exception_is_a_viopay_error_and_documented() -> None:
    tree = errors.__doc__ or ""
    for name in sdk.__all__:
        value = getattr(sdk, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, sdk.DeviceError), name
            assert value.__doc__, name
            assert name in tree, f"{name} missing from the tree in errors.__doc__"


def test_auth_classes_are_httpx_auth() -> None:
    import httpx

    for cls in (
        sdk.ActivationHeaders,
        sdk.AttestationSignature,
        sdk.AttestationToken,
        sdk.ChargeSignature,
    ):
        assert issubclass(cls, httpx.Auth)


def test_memory_key_store_satisfies_the_protocol() -> None:
    store = sdk.MemoryKeyStore(sdk.IdentityKey("k1", bytes(32)))
    assert isinstance(store, sdk.KeyStore)
