"""The httpx.Auth signers against the worked examples of spec/vectors (§2.2, §2.4)."""

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from viopay_device import (
    ActivationHeaders,
    AttestationSignature,
    AttestationToken,
    ChargeSignature,
)
from viopay_device.protocol.signing import charge_string_to_sign, verify_signature

UA = "Viopay-POS/1.4.2 (Android 12; PAX-A920)"
# attest_signature.json
ATTEST_SECRET = bytes.fromhex("b516b0d9beeb111a709b1bb6dc21538db1f7ff13490a6cc7f52e1314961e53df")
ATTEST_SIGNATURE = "v1=JsXEH1Ie+2MVlJ2FtPQ39hwlz/LX6ZeiwxlAM9tg8jM="
# charge_signature.json
MAC_KEY = bytes.fromhex("8f40843efefbfc9200c60046b322e1cbeeeec449aeced7f01c7a8d3d7fb60df0")
REFUND_BODY = b'{"v":1,"kid":"msk-ks_demo","iv":"AAAAAAAAAAAAAAAA","ct":"c2FtcGxl"}'
REFUND_SIGNATURE = "v1=SfmJ31J0vkwl7AGtIn20cWFVTvttxpJVt02S/mrEY+M="
CANCEL_SIGNATURE = "v1=S6HLj5ixtQ0uWiDJ9OIqvHqWLoVo+EaWCt/UdrZEwao="


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def send(auth: httpx.Auth, method: str, url: str, content: bytes | None = None) -> httpx.Request:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        http.request(method, url, content=content, auth=auth)
    return seen[0]


def test_activation_headers() -> None:
    request = send(ActivationHeaders("POS-8F3A2C91", UA), "POST", "https://h/pos/bootstrap")
    assert request.headers["X-Device-Id"] == "POS-8F3A2C91"
    assert request.headers["User-Agent"] == UA
    assert request.headers["X-Client-Type"] == "pos"


def test_attestation_signature_matches_the_vector() -> None:
    auth = AttestationSignature(
        "POS-8F3A2C91",
        UA,
        key_id="device-id-key-2025-01",
        secret=ATTEST_SECRET,
        clock=lambda: at("2025-12-13T14:25:30.750Z"),  # the fraction is dropped
        nonce_factory=lambda: "a1b2c3d4e5f6",
    )
    request = send(auth, "POST", "https://h/pos/attest")
    assert request.headers["X-Key-Id"] == "device-id-key-2025-01"
    assert request.headers["X-Timestamp"] == "2025-12-13T14:25:30Z"
    assert request.headers["X-Nonce"] == "a1b2c3d4e5f6"
    assert request.headers["X-Signature"] == ATTEST_SIGNATURE
    assert request.headers["X-Client-Type"] == "pos"


def test_timestamps_are_utc_z_even_from_an_offset_clock() -> None:
    plus_two = timezone(timedelta(hours=2))
    auth = AttestationSignature(
        "POS-8F3A2C91",
        UA,
        key_id="device-id-key-2025-01",
        secret=ATTEST_SECRET,
        clock=lambda: datetime(2025, 12, 13, 16, 25, 30, tzinfo=plus_two),
        nonce_factory=lambda: "a1b2c3d4e5f6",
    )
    request = send(auth, "POST", "https://h/pos/attest")
    assert request.headers["X-Timestamp"] == "2025-12-13T14:25:30Z"
    assert request.headers["X-Signature"] == ATTEST_SIGNATURE


def test_default_nonces_are_fresh_and_well_formed() -> None:
    auth = AttestationSignature("POS-8F3A2C91", UA, key_id="k", secret=ATTEST_SECRET)
    nonces = {send(auth, "POST", "https://h/pos/attest").headers["X-Nonce"] for _ in range(5)}
    assert len(nonces) == 5
    assert all(8 <= len(n) <= 128 for n in nonces)


@pytest.mark.parametrize("nonce", ["short", "has space in it", "x" * 129, "ünïcode-nonce"])
def test_a_bad_nonce_factory_is_refused(nonce: str) -> None:
    auth = AttestationSignature(
        "POS-8F3A2C91", UA, key_id="k", secret=ATTEST_SECRET, nonce_factory=lambda: nonce
    )
    with pytest.raises(ValueError):
        send(auth, "POST", "https://h/pos/attest")


def test_a_naive_clock_is_refused() -> None:
    auth = AttestationSignature(
        "POS-8F3A2C91", UA, key_id="k", secret=ATTEST_SECRET, clock=lambda: datetime(2025, 1, 1)
    )
    with pytest.raises(ValueError):
        send(auth, "POST", "https://h/pos/attest")


def test_attestation_token_headers() -> None:
    request = send(
        AttestationToken("POS-8F3A2C91", UA, token="att_abc"), "POST", "https://h/pos/keys"
    )
    assert request.headers["Authorization"] == "Attestation att_abc"
    assert request.headers["X-Device-Id"] == "POS-8F3A2C91"


def charge_auth(timestamp: str, nonce: str) -> ChargeSignature:
    return ChargeSignature(
        terminal_id="TID-004812",
        key_id="mac-ks_demo",
        mac_key=MAC_KEY,
        user_agent=UA,
        clock=lambda: at(timestamp),
        nonce_factory=lambda: nonce,
    )


def test_charge_signature_with_query_and_body_matches_the_vector() -> None:
    request = send(
        charge_auth("2025-12-13T14:25:30Z", "f9e8d7c6b5a4"),
        "POST",
        "https://h/pos/charge/ch_123/refund?expand=charge",
        REFUND_BODY,
    )
    assert request.headers["X-Signature"] == REFUND_SIGNATURE
    assert request.headers["X-Terminal-Id"] == "TID-004812"
    assert request.headers["X-Key-Id"] == "mac-ks_demo"
    assert request.headers["X-Client-Type"] == "pos"
    assert request.headers["User-Agent"] == UA


def test_charge_signature_without_query_or_body_matches_the_vector() -> None:
    request = send(
        charge_auth("2025-12-13T14:26:00Z", "0123456789ab"),
        "POST",
        "https://h/pos/charge/ch_123/cancel",
    )
    assert request.content == b""
    assert request.headers["X-Signature"] == CANCEL_SIGNATURE


def test_charge_signature_covers_the_raw_path_and_query_as_sent() -> None:
    url = "https://h/api/pos/charge/ch_1?b=2&a=%2F1"
    request = send(charge_auth("2025-12-13T14:25:30Z", "n0nce-n0nce"), "GET", url)
    message = charge_string_to_sign(
        method="GET",
        path="/api/pos/charge/ch_1",
        query="b=2&a=%2F1",
        body=b"",
        terminal_id="TID-004812",
        timestamp="2025-12-13T14:25:30Z",
        nonce="n0nce-n0nce",
    )
    verify_signature(MAC_KEY, message, request.headers["X-Signature"])


def test_signers_never_show_their_keys() -> None:
    attest = AttestationSignature("POS-8F3A2C91", UA, key_id="k", secret=ATTEST_SECRET)
    token = AttestationToken("POS-8F3A2C91", UA, token="att_secret_token")
    charge = charge_auth("2025-12-13T14:25:30Z", "f9e8d7c6b5a4")
    for auth, secret in ((attest, ATTEST_SECRET), (charge, MAC_KEY)):
        assert secret.hex() not in repr(auth) and repr(secret) not in repr(auth)
    assert "att_secret_token" not in repr(token)


@pytest.mark.parametrize(
    ("version", "os", "model"),
    [("1.4", "Android 12", "PAX-A920"), ("1.4.2", "Android (12)", "PAX"), ("1.4.2", "A", "B;C")],
)
def test_a_user_agent_outside_the_grammar_is_refused(version: str, os: str, model: str) -> None:
    from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore

    store = MemoryKeyStore(IdentityKey("k1", bytes(32)))
    with pytest.raises(ValueError):
        DeviceClient(
            "https://h",
            device_id="POS-8F3A2C91",
            key_store=store,
            app_version=version,
            os=os,
            model=model,
        )


@pytest.mark.parametrize("device_id", ["POS-8f3a2c91", "POS-8F3A2C9", "TID-004812"])
def test_a_malformed_device_id_is_refused(device_id: str) -> None:
    from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore

    store = MemoryKeyStore(IdentityKey("k1", bytes(32)))
    with pytest.raises(ValueError):
        DeviceClient("https://h", device_id=device_id, key_store=store)
