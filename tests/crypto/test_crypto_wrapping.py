import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay.crypto.wrapping import (
    KeyWrapper,
    MasterKeyWrapper,
    decode_master_key,
    load_or_create_master_key_file,
)
from viopay_device.protocol.errors import EnvelopeNotOpened

MASTER = bytes(range(32))
WRAPPER = MasterKeyWrapper(MASTER)


def test_satisfies_protocol() -> None:
    wrapper: KeyWrapper = WRAPPER
    assert wrapper.unwrap(wrapper.wrap(b"k", context="c"), context="c") == b"k"


@given(plaintext=st.binary(max_size=512), context=st.text(max_size=40))
def test_round_trip(plaintext: bytes, context: str) -> None:
    blob = WRAPPER.wrap(plaintext, context=context)
    assert blob[0] == 1 and len(blob) == 1 + 12 + len(plaintext) + 16
    assert WRAPPER.unwrap(blob, context=context) == plaintext


def test_fresh_nonce() -> None:
    assert WRAPPER.wrap(b"k", context="c") != WRAPPER.wrap(b"k", context="c")


def test_wrong_context_or_key() -> None:
    blob = WRAPPER.wrap(b"secret key", context="keyset:ks_1:MSK")
    with pytest.raises(EnvelopeNotOpened):
        WRAPPER.unwrap(blob, context="keyset:ks_1:TPK")
    with pytest.raises(EnvelopeNotOpened):
        MasterKeyWrapper(os.urandom(32)).unwrap(blob, context="keyset:ks_1:MSK")


@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_tamper(position: int, bit: int) -> None:
    blob = bytearray(WRAPPER.wrap(b"secret key", context="c"))
    blob[position % len(blob)] ^= 1 << bit
    with pytest.raises(EnvelopeNotOpened):
        WRAPPER.unwrap(bytes(blob), context="c")


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01" + bytes(27), b"\x02" + bytes(40)])
def test_short_or_unknown_version(blob: bytes) -> None:
    with pytest.raises(EnvelopeNotOpened):
        WRAPPER.unwrap(blob, context="c")


def test_derive() -> None:
    a = WRAPPER.derive("idempotency-fingerprint")
    assert len(a) == 32
    assert a == MasterKeyWrapper(MASTER).derive("idempotency-fingerprint")
    assert a != WRAPPER.derive("other")
    assert a != MasterKeyWrapper(os.urandom(32)).derive("idempotency-fingerprint")


def test_repr_hides_key() -> None:
    key = bytes.fromhex("ab" * 32)
    text = repr(MasterKeyWrapper(key)) + str(MasterKeyWrapper(key))
    assert "ab" * 4 not in text.lower() and base64.b64encode(key).decode()[:8] not in text


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_master_key_length(size: int) -> None:
    with pytest.raises(ValueError):
        MasterKeyWrapper(bytes(size))


def test_decode_master_key() -> None:
    key = os.urandom(32)
    assert decode_master_key(base64.b64encode(key).decode()) == key
    assert decode_master_key(base64.b64encode(key).decode() + "\n") == key
    for bad in ["", "not base64!", base64.b64encode(bytes(31)).decode(), key.hex()]:
        with pytest.raises(ValueError, match="VIOPAY_MASTER_KEY must be base64 of 32 bytes"):
            decode_master_key(bad)


def test_key_file_created_0600_and_reread(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nested" / "master.key"
    key = load_or_create_master_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text()) == key
    assert load_or_create_master_key_file(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left


def test_key_file_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = os.urandom(32)
    path.write_text(base64.b64encode(key).decode())
    path.chmod(0o600)
    assert load_or_create_master_key_file(path) == key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_key_file_bad_permissions_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key_file(path)
    path.chmod(mode)
    with pytest.raises(ValueError, match="chmod 600"):
        load_or_create_master_key_file(path)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", base64.b64encode(bytes(16)), b"\xff\xfe", bytes(32)]
)
def test_key_file_malformed_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="must hold base64 of 32 bytes") as exc:
        load_or_create_master_key_file(path)
    assert exc.value.__cause__ is None
