"""Key store semantics, secrets kept out of reprs, and the problem → exception mapping."""

from datetime import UTC, datetime

import httpx
import pytest

from device_fake import IDENTITY_SECRET, FakeServer
from viopay_device import (
    APIError,
    AppVersionUnsupported,
    Attestation,
    AuthenticationError,
    Conflict,
    DeviceClient,
    IdentityKey,
    InvalidState,
    KeySet,
    MemoryKeyStore,
    NotFound,
    PairingCodeInvalid,
    ProcessorTimeout,
    RateLimited,
    ServerError,
    TimestampOutOfWindow,
    ValidationError,
)
from viopay_device.errors import error_from_response

TYPES = ("TMK", "KEK", "MSK", "TPK", "TDK", "MAC")


def key_set(name: str, fill: int) -> KeySet:
    return KeySet(
        key_set_id=name,
        keys={t: bytes([fill + i]) * 32 for i, t in enumerate(TYPES)},
        key_ids={t: f"{t.lower()}-{name}" for t in TYPES},
        kcvs={t: "ABCDEF" for t in TYPES},
    )


def test_promotion_moves_pending_to_current_and_current_to_previous() -> None:
    store = MemoryKeyStore(IdentityKey("k1", IDENTITY_SECRET))
    first, second = key_set("ks_1", 1), key_set("ks_2", 10)
    store.save_pending(first)
    store.promote_pending("ks_1")
    assert (store.current, store.previous, store.pending) == (first, None, None)
    store.save_pending(second)
    assert store.current is first and store.pending is second
    store.promote_pending("ks_2")
    assert [store.current, store.previous, store.pending] == [second, first, None]
    with pytest.raises(ValueError):
        store.promote_pending("ks_2")


def test_key_set_accessors_and_shape() -> None:
    ks = key_set("ks_1", 1)
    assert ks.hmac_key_id == "mac-ks_1" and ks.msk_kid == "msk-ks_1"
    assert ks.key("MSK") == bytes([3]) * 32
    with pytest.raises(ValueError):
        KeySet(key_set_id="x", keys={"MSK": b"k"}, key_ids={}, kcvs={})


def test_identity_key_validation() -> None:
    assert IdentityKey.from_hex("k1", IDENTITY_SECRET.hex()).secret == IDENTITY_SECRET
    for bad in ("zz" * 32, "ab" * 31):
        with pytest.raises(ValueError) as caught:
            IdentityKey.from_hex("k1", bad)
        assert bad not in str(caught.value)
    with pytest.raises(ValueError):
        IdentityKey("has space", IDENTITY_SECRET)


def test_reprs_hide_every_secret(server: FakeServer, activated: DeviceClient) -> None:
    store = activated.key_store
    assert isinstance(store, MemoryKeyStore) and store.current is not None
    attestation = activated.attest()
    secrets = [IDENTITY_SECRET, *store.current.keys.values()]
    shown = " ".join(
        repr(x) for x in (store, store.identity, store.current, activated, attestation)
    )
    for secret in secrets:
        assert secret.hex() not in shown.lower() and repr(secret) not in shown
        assert secret.hex().upper() not in shown
    assert attestation.token not in shown
    assert "ks_" in repr(store) and "mac-" in repr(store.current)


def test_attestation_token_is_not_in_repr() -> None:
    attestation = Attestation(
        token="att_" + "x" * 43,
        token_type="Attestation",
        expires_in=300,
        expires_at=datetime(2025, 1, 1, tzinfo=UTC),
        device_status="claimed",
    )
    assert "x" * 43 not in repr(attestation)


def problem(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"X-Request-Id": "req_9", **headers})


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_request", ValidationError),
        (401, "invalid_signature", AuthenticationError),
        (401, "timestamp_out_of_window", TimestampOutOfWindow),
        (404, "pairing_code_invalid", PairingCodeInvalid),
        (404, "not_found", NotFound),
        (409, "invalid_state", InvalidState),
        (409, "something_new", Conflict),
        (426, "app_version_unsupported", AppVersionUnsupported),
        (429, "rate_limited", RateLimited),
        (504, "processor_timeout", ProcessorTimeout),
        (500, "internal_error", ServerError),
        (418, "teapot", APIError),
    ],
)
def test_problems_map_by_code_then_status(status: int, code: str, expected: type[APIError]) -> None:
    error = error_from_response(problem(status, {"code": code, "status": status, "detail": "d"}))
    assert type(error) is expected
    assert (error.status, error.code, error.request_id, error.detail) == (
        status,
        code,
        "req_9",
        "d",
    )
    assert str(error) == f"{status} {code}: d (request req_9)"


def test_problem_extras() -> None:
    body = {"code": "invalid_request", "errors": [{"field": "amount", "message": "too big"}]}
    validation = error_from_response(problem(400, body))
    assert isinstance(validation, ValidationError)
    assert validation.errors == [{"field": "amount", "message": "too big"}]

    limited = error_from_response(problem(429, {"code": "rate_limited"}, **{"Retry-After": "7"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0

    skew = {"code": "timestamp_out_of_window", "server_time": "2025-12-13T14:25:30Z"}
    late = error_from_response(problem(401, skew))
    assert isinstance(late, TimestampOutOfWindow)
    assert late.server_time == datetime(2025, 12, 13, 14, 25, 30, tzinfo=UTC)

    upgrade = error_from_response(
        problem(426, {"code": "app_version_unsupported", "min_supported_version": "2.0.0"})
    )
    assert isinstance(upgrade, AppVersionUnsupported) and upgrade.min_supported_version == "2.0.0"

    timeout = error_from_response(problem(504, {"code": "processor_timeout", "charge_id": "ch_9"}))
    assert isinstance(timeout, ProcessorTimeout) and timeout.charge_id == "ch_9"


def test_a_non_problem_error_still_maps() -> None:
    error = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, ServerError) and error.code is None and error.problem == {}
