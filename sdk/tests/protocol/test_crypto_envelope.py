import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay_device.protocol.envelope import (
    Envelope,
    card_aad,
    chunk_aad,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)
from viopay_device.protocol.errors import EnvelopeMalformed, EnvelopeNotOpened

KEY = bytes(range(32))
AAD = request_aad(method="POST", path="/pos/charge", subject="TID-000001")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def good() -> dict[str, object]:
    return {"v": 1, "kid": "msk-1", "iv": b64(bytes(12)), "ct": b64(bytes(16))}


def test_aads() -> None:
    assert AAD == b"viopay-msk-v1\nreq\nPOST\n/pos/charge\nTID-000001"
    resp = response_aad(method="post", path="/pos/keys", subject="POS-8F3A2C91", nonce="")
    assert resp == b"viopay-msk-v1\nresp\nPOST\n/pos/keys\nPOS-8F3A2C91\n"
    assert chunk_aad(resp, index=0, count=3, sha256_hex="ab" * 32) == resp + (
        b"\n0/3/" + b"ab" * 32
    )
    assert card_aad("TID-004812") == b"viopay-tdk-v1\nTID-004812"


def test_seal_is_fresh_each_time() -> None:
    a, b = seal(KEY, "k", b"x", AAD), seal(KEY, "k", b"x", AAD)
    assert a["iv"] != b["iv"] and a["ct"] != b["ct"]
    assert set(a) == {"v", "kid", "iv", "ct"} and a["v"] == 1 and a["kid"] == "k"


@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=256), kid=st.text(max_size=40))
def test_round_trip(plaintext: bytes, aad: bytes, kid: str) -> None:
    envelope = parse_envelope(seal(KEY, kid, plaintext, aad))
    assert envelope.kid == kid
    assert open_envelope(KEY, envelope, aad) == plaintext


@given(plaintext=st.binary(max_size=256), position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_bit_flip_in_ct_fails(plaintext: bytes, position: int, bit: int) -> None:
    envelope = parse_envelope(seal(KEY, "k", plaintext, AAD))
    ct = bytearray(envelope.ct)
    ct[position % len(ct)] ^= 1 << bit
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(KEY, Envelope(envelope.kid, envelope.iv, bytes(ct)), AAD)


def test_tampered_iv_wrong_key_wrong_aad_fail() -> None:
    envelope = parse_envelope(seal(KEY, "k", b"secret", AAD))
    iv = bytes([envelope.iv[0] ^ 1]) + envelope.iv[1:]
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(KEY, Envelope("k", iv, envelope.ct), AAD)
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(os.urandom(32), envelope, AAD)
    other = response_aad(method="POST", path="/pos/charge", subject="TID-000001", nonce="")
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(KEY, envelope, other)
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(KEY, Envelope("k", envelope.iv, envelope.ct[:-1]), AAD)


def test_kid_is_not_authenticated() -> None:
    envelope = parse_envelope(seal(KEY, "k", b"secret", AAD))
    assert open_envelope(KEY, Envelope("another", envelope.iv, envelope.ct), AAD) == b"secret"


def test_failure_message_has_no_plaintext() -> None:
    envelope = parse_envelope(seal(KEY, "k", b"4242424242424242", AAD))
    with pytest.raises(EnvelopeNotOpened) as exc:
        open_envelope(KEY, envelope, AAD + b"!")
    assert "4242" not in str(exc.value) and exc.value.__cause__ is None


def test_parse_good() -> None:
    envelope = parse_envelope({**good(), "chunk": {"index": 0}})  # extra members ignored
    assert envelope == Envelope("msk-1", bytes(12), bytes(16))


@pytest.mark.parametrize(
    "change",
    [
        {"v": True},
        {"v": 2},
        {"v": 0},
        {"v": 1.0},
        {"v": "1"},
        {"v": None},
        {"kid": 5},
        {"kid": None},
        {"iv": b"x"},
        {"ct": ["AAAA"]},
    ],
)
def test_parse_mistyped_member(change: dict[str, object]) -> None:
    with pytest.raises(EnvelopeMalformed):
        parse_envelope({**good(), **change})


@pytest.mark.parametrize("missing", ["v", "kid", "iv", "ct"])
def test_parse_missing_member(missing: str) -> None:
    obj = good()
    del obj[missing]
    with pytest.raises(EnvelopeMalformed):
        parse_envelope(obj)


@pytest.mark.parametrize("obj", [None, [], "envelope", 1, [good()]])
def test_parse_not_an_object(obj: object) -> None:
    with pytest.raises(EnvelopeMalformed):
        parse_envelope(obj)


def test_malformed_wins_over_bad_base64() -> None:
    with pytest.raises(EnvelopeMalformed):
        parse_envelope({**good(), "v": 2, "iv": "!!"})


@pytest.mark.parametrize(
    "change",
    [
        {"iv": "AAAAAAAAAAAAAAA"},  # length not a multiple of 4
        {"iv": "AAAAAAAAAAAAAAAA\n"},
        {"iv": " AAAAAAAAAAAAAAAA"},
        {"iv": "AAAAAAAA-AAAAAAA"},  # base64url alphabet
        {"iv": "AAAAAAAAAAAAAAA="},  # 11 bytes
        {"iv": b64(bytes(11))},
        {"iv": b64(bytes(13))},
        {"iv": ""},
        {"ct": b64(bytes(15))},
        {"ct": ""},
        {"ct": b64(bytes(17))[:-1]},  # missing padding
        {"ct": b64(bytes(16)) + "="},  # excess padding
        {"ct": "AAAAAAAAAAAAAAAAAAAAAB=="},  # non-zero pad bits
        {"ct": "é" * 24},
    ],
)
def test_parse_undecodable(change: dict[str, object]) -> None:
    with pytest.raises(EnvelopeNotOpened):
        parse_envelope({**good(), **change})


def test_wrong_key_length_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        seal(bytes(16), "k", b"", AAD)
    with pytest.raises(ValueError):
        seal(KEY, "k", b"", AAD, iv=bytes(16))
