"""Key check values (§3.6): first 3 bytes, upper-case hex, of a MAC over 16 zero bytes."""

from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import algorithms

_ZERO_BLOCK = bytes(16)
_KCV_BYTES = 3


def aes_kcv(key: bytes) -> str:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(_ZERO_BLOCK)
    return mac.finalize()[:_KCV_BYTES].hex().upper()


def hmac_kcv(key: bytes) -> str:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(_ZERO_BLOCK)
    return mac.finalize()[:_KCV_BYTES].hex().upper()


def kcv_for(key_type: str, key: bytes) -> str:
    """The MAC key is an HMAC key; every other key of a set is an AES key."""
    return hmac_kcv(key) if key_type == "MAC" else aes_kcv(key)
