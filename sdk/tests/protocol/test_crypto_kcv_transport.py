import os

import pytest

from viopay_device.protocol.errors import CryptoError
from viopay_device.protocol.kcv import aes_kcv, hmac_kcv, kcv_for
from viopay_device.protocol.keyblocks import KEY_TYPES
from viopay_device.protocol.transport import derive_ktk, generate_x25519, x25519_shared


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_kcv_for_dispatch(key_type: str) -> None:
    key = os.urandom(32)
    expected = hmac_kcv(key) if key_type == "MAC" else aes_kcv(key)
    got = kcv_for(key_type, key)
    assert got == expected and len(got) == 6 and got == got.upper()


def test_agreement_both_ways() -> None:
    a_priv, a_pub = generate_x25519()
    b_priv, b_pub = generate_x25519()
    assert len(a_priv) == len(a_pub) == 32
    assert x25519_shared(a_priv, b_pub) == x25519_shared(b_priv, a_pub)


@pytest.mark.parametrize(
    ("private", "public"),
    [
        (bytes(31), bytes(32)),
        (os.urandom(32), bytes(33)),
        (os.urandom(32), bytes(32)),  # low-order point: all-zero shared secret
        (os.urandom(32), (1).to_bytes(32, "little")),
    ],
    # Names, not the random bytes: xdist needs every worker to collect the same test ids.
    ids=["private-31-bytes", "public-33-bytes", "public-zero", "public-one"],
)
def test_bad_agreement(private: bytes, public: bytes) -> None:
    with pytest.raises(CryptoError):
        x25519_shared(private, public)


def test_ktk_binds_its_inputs() -> None:
    base = {
        "shared": bytes(32),
        "identity_secret": bytes(32),
        "key_set_id": "ks_1",
        "device_id": "POS-00000001",
    }
    ktk = derive_ktk(**base)  # type: ignore[arg-type]
    assert len(ktk) == 32
    for name, value in [
        ("shared", b"\x01" * 32),
        ("identity_secret", b"\x01" * 32),
        ("key_set_id", "ks_2"),
        ("device_id", "POS-00000002"),
    ]:
        assert derive_ktk(**{**base, name: value}) != ktk  # type: ignore[arg-type]
