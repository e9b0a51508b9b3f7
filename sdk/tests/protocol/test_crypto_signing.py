import base64

import pytest

from viopay_device.protocol.errors import SignatureMismatch
from viopay_device.protocol.signing import (
    SIGNATURE_RE,
    attest_string_to_sign,
    charge_string_to_sign,
    sign,
    verify_signature,
)

KEY = bytes(range(32))
MESSAGE = attest_string_to_sign(
    device_id="POS-8F3A2C91", key_id="k1", timestamp="2025-12-13T14:25:30Z", nonce="abcdefgh"
)


def test_signature_shape() -> None:
    assert SIGNATURE_RE.fullmatch(sign(KEY, MESSAGE))
    assert SIGNATURE_RE.match(sign(KEY, MESSAGE) + "\n") is None


def _flip_char(signature: str, index: int) -> str:
    c = signature[index]
    return signature[:index] + ("B" if c != "B" else "C") + signature[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: _flip_char(s, 3),
        lambda s: _flip_char(s, 45),
        lambda s: "v2=" + s[3:],
        lambda s: s[3:],
        lambda s: s[:-1],
        lambda s: s + "=",
        lambda s: s + "\n",
        lambda s: " " + s,
        lambda s: s.replace("v1=", "V1="),
        lambda s: "",
        lambda s: "v1=" + "é" * 43 + "=",
    ],
)
def test_tampered_signature_refused(tamper: object) -> None:
    assert callable(tamper)
    with pytest.raises(SignatureMismatch):
        verify_signature(KEY, MESSAGE, tamper(sign(KEY, MESSAGE)))


def test_wrong_key_or_message_refused() -> None:
    signature = sign(KEY, MESSAGE)
    with pytest.raises(SignatureMismatch):
        verify_signature(bytes(32), MESSAGE, signature)
    with pytest.raises(SignatureMismatch):
        verify_signature(KEY, MESSAGE + b"x", signature)


def test_non_canonical_base64_refused() -> None:
    # Same 32 digest bytes, but non-zero pad bits in the last character.
    signature = sign(KEY, MESSAGE)
    digest = base64.b64decode(signature[3:])
    last = signature[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    variant = alphabet[alphabet.index(last) | 1]
    forged = signature[:-2] + variant + "="
    assert forged != signature
    assert base64.b64decode(forged[3:]) == digest
    with pytest.raises(SignatureMismatch):
        verify_signature(KEY, MESSAGE, forged)


def test_mismatch_message_gives_no_hint() -> None:
    with pytest.raises(SignatureMismatch) as malformed:
        verify_signature(KEY, MESSAGE, "nope")
    with pytest.raises(SignatureMismatch) as wrong:
        verify_signature(KEY, MESSAGE, sign(bytes(32), MESSAGE))
    assert str(malformed.value) == str(wrong.value)


def test_charge_string_to_sign_layout() -> None:
    message = charge_string_to_sign(
        method="get",
        path="/pos/charge/ch_1",
        query="",
        body=b"",
        terminal_id="TID-000001",
        timestamp="t",
        nonce="n",
    )
    assert message == b"GET\n/pos/charge/ch_1\n\n\nTID-000001\nt\nn"


def test_charge_body_may_hold_line_feeds() -> None:
    message = charge_string_to_sign(
        method="POST",
        path="/p",
        query="a=1",
        body=b'{\n"a": 1}\n',
        terminal_id="T",
        timestamp="t",
        nonce="n",
    )
    assert message == b'POST\n/p\na=1\n{\n"a": 1}\n\nT\nt\nn'


@pytest.mark.parametrize("field", ["path", "query", "terminal_id", "timestamp", "nonce"])
def test_line_feed_outside_body_refused(field: str) -> None:
    parts = {
        "method": "POST",
        "path": "/p",
        "query": "",
        "terminal_id": "T",
        "timestamp": "t",
        "nonce": "n",
    }
    parts[field] = "a\nb"
    with pytest.raises(ValueError):
        charge_string_to_sign(body=b"", **parts)


def test_attest_line_feed_refused() -> None:
    with pytest.raises(ValueError):
        attest_string_to_sign(device_id="POS-1\n", key_id="k", timestamp="t", nonce="n")
