"""AES-256-GCM envelopes under the MSK (requests, responses) and the TDK (card), §3.7 and §4.1."""

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from viopay_device.protocol._b64 import b64decode_strict, b64encode
from viopay_device.protocol.errors import EnvelopeMalformed, EnvelopeNotOpened

IV_LENGTH = 12
TAG_LENGTH = 16
KEY_LENGTH = 32
_MSK_LABEL = "viopay-msk-v1"
_TDK_LABEL = "viopay-tdk-v1"


@dataclass(frozen=True)
class Envelope:
    kid: str
    iv: bytes
    ct: bytes  # ciphertext || 16-byte tag


def request_aad(*, method: str, path: str, subject: str) -> bytes:
    return "\n".join([_MSK_LABEL, "req", method.upper(), path, subject]).encode("utf-8")


def response_aad(*, method: str, path: str, subject: str, nonce: str) -> bytes:
    parts = [_MSK_LABEL, "resp", method.upper(), path, subject, nonce]
    return "\n".join(parts).encode("utf-8")


def chunk_aad(base: bytes, *, index: int, count: int, sha256_hex: str) -> bytes:
    """Response AAD of a terminal-parameters chunk (§3.9)."""
    return base + f"\n{index}/{count}/{sha256_hex}".encode("ascii")


def card_aad(terminal_id: str) -> bytes:
    return f"{_TDK_LABEL}\n{terminal_id}".encode()


def parse_envelope(obj: object) -> Envelope:
    """Check the shape (EnvelopeMalformed), then decode iv and ct (EnvelopeNotOpened)."""
    if not isinstance(obj, dict):
        raise EnvelopeMalformed("envelope must be a JSON object")
    version = obj.get("v")
    if type(version) is not int or version != 1:  # bool is an int subclass: True is not 1 here
        raise EnvelopeMalformed("envelope member 'v' must be the integer 1")
    for name in ("kid", "iv", "ct"):
        if not isinstance(obj.get(name), str):
            raise EnvelopeMalformed(f"envelope member '{name}' must be a string")
    kid, iv_text, ct_text = obj["kid"], obj["iv"], obj["ct"]
    try:
        iv = b64decode_strict(iv_text)
        ct = b64decode_strict(ct_text)
    except ValueError:
        raise EnvelopeNotOpened("decryption failed") from None
    if len(iv) != IV_LENGTH or len(ct) < TAG_LENGTH:
        raise EnvelopeNotOpened("decryption failed")
    return Envelope(kid=kid, iv=iv, ct=ct)


def _aesgcm(key: bytes) -> AESGCM:
    # A wrong key length is a server bug, not a bad message: ValueError, not EnvelopeNotOpened.
    if len(key) != KEY_LENGTH:
        raise ValueError("envelope keys are AES-256 (32 bytes)")
    return AESGCM(key)


def seal(
    key: bytes, kid: str, plaintext: bytes, aad: bytes, *, iv: bytes | None = None
) -> dict[str, object]:
    """Encrypt into ``{"v": 1, "kid", "iv", "ct"}``; a fresh random IV unless one is given
    (tests only: reusing an IV under one key breaks GCM)."""
    if iv is None:
        iv = os.urandom(IV_LENGTH)
    elif len(iv) != IV_LENGTH:
        raise ValueError("iv must be 12 bytes")
    ct = _aesgcm(key).encrypt(iv, plaintext, aad)
    return {"v": 1, "kid": kid, "iv": b64encode(iv), "ct": b64encode(ct)}


def open_envelope(key: bytes, envelope: Envelope, aad: bytes) -> bytes:
    """Decrypt and authenticate; EnvelopeNotOpened on any failure, with no detail."""
    cipher = _aesgcm(key)
    if len(envelope.iv) != IV_LENGTH or len(envelope.ct) < TAG_LENGTH:
        raise EnvelopeNotOpened("decryption failed")
    try:
        return cipher.decrypt(envelope.iv, envelope.ct, aad)
    except InvalidTag:
        raise EnvelopeNotOpened("decryption failed") from None
