"""Key transport (§3.6): X25519 agreement and the KTK derived from it with HKDF-SHA256."""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from viopay_device.protocol.errors import CryptoError

X25519_KEY_LENGTH = 32
KTK_LENGTH = 32
_KTK_INFO = b"viopay-ktk-v1\n"


def generate_x25519() -> tuple[bytes, bytes]:
    """Return a fresh (private, public) pair, both raw 32 bytes."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); CryptoError on a bad length or an all-zero result
    (a low-order peer key)."""
    if len(private) != X25519_KEY_LENGTH or len(peer_public) != X25519_KEY_LENGTH:
        raise CryptoError("X25519 keys must be 32 bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError:
        raise CryptoError("X25519 agreement failed") from None
    if shared == bytes(X25519_KEY_LENGTH):
        raise CryptoError("X25519 agreement failed")
    return shared


def derive_ktk(*, shared: bytes, identity_secret: bytes, key_set_id: str, device_id: str) -> bytes:
    """HKDF-SHA256(ikm = shared || identity_secret, salt = key_set_id,
    info = "viopay-ktk-v1\\n" + device_id, 32 bytes)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KTK_LENGTH,
        salt=key_set_id.encode("utf-8"),
        info=_KTK_INFO + device_id.encode("utf-8"),
    )
    return hkdf.derive(shared + identity_secret)
