"""Keys at rest under the server's master key, behind the small interface an HSM can take
over later (§3.6: "The server stores keys only wrapped under its own master key")."""

import contextlib
import hashlib
import os
import pathlib
import stat
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from viopay_device.protocol._b64 import b64decode_strict, b64encode
from viopay_device.protocol.errors import EnvelopeNotOpened

MASTER_KEY_LENGTH = 32
_BLOB_VERSION = b"\x01"
_NONCE_LENGTH = 12
_TAG_LENGTH = 16
_DERIVE_INFO = b"viopay-derive-v1\n"
# The AES-GCM wrapping key is itself derived, under a label derive() can never produce, so
# the master key only ever feeds HKDF and no derive(purpose) output equals the wrapping key.
_WRAP_INFO = b"viopay-wrap-v1"
_ENV_KEY_ERROR = "VIOPAY_MASTER_KEY must be base64 of 32 bytes"


class KeyWrapper(Protocol):
    def wrap(self, plaintext: bytes, *, context: str) -> bytes: ...

    def unwrap(self, blob: bytes, *, context: str) -> bytes: ...

    def derive(self, purpose: str) -> bytes: ...


def _hkdf(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key)


class MasterKeyWrapper:
    """KeyWrapper over a 32-byte master key held in process memory.

    Blob: 0x01 || 12-byte random nonce || AES-256-GCM ciphertext || tag, AAD = context.
    """

    __slots__ = ("_aead", "_master_key")

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_LENGTH:
            raise ValueError("master key must be 32 bytes")
        self._master_key = bytes(master_key)
        self._aead = AESGCM(_hkdf(self._master_key, _WRAP_INFO))

    def __repr__(self) -> str:
        return "MasterKeyWrapper(<master key hidden>)"

    def wrap(self, plaintext: bytes, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE_LENGTH)
        return _BLOB_VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def unwrap(self, blob: bytes, *, context: str) -> bytes:
        header = len(_BLOB_VERSION) + _NONCE_LENGTH
        if len(blob) < header + _TAG_LENGTH or blob[:1] != _BLOB_VERSION:
            raise EnvelopeNotOpened("decryption failed")
        nonce = blob[1:header]
        try:
            return self._aead.decrypt(nonce, blob[header:], context.encode())
        except InvalidTag:
            raise EnvelopeNotOpened("decryption failed") from None

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, the same on every server sharing the master key."""
        return _hkdf(self._master_key, _DERIVE_INFO + purpose.encode("utf-8"))


def decode_master_key(b64: str) -> bytes:
    """Decode VIOPAY_MASTER_KEY: base64 (surrounding whitespace ignored) of exactly 32 bytes."""
    try:
        key = b64decode_strict(b64.strip())
    except ValueError:
        raise ValueError(_ENV_KEY_ERROR) from None
    if len(key) != MASTER_KEY_LENGTH:
        raise ValueError(_ENV_KEY_ERROR)
    return key


def load_or_create_master_key_file(path: pathlib.Path) -> bytes:
    """Read the master key file, or create it (mode 0600, 32 random bytes, base64) if missing.

    ValueError if the file is group/world accessible or does not hold base64 of 32 bytes.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_key_file(path, b64encode(os.urandom(MASTER_KEY_LENGTH)) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"master key file {path} has mode {mode:04o}; it must not be accessible by group "
            f"or others (chmod 600 {path})"
        )
    try:
        return decode_master_key(path.read_text(encoding="ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"master key file {path} must hold base64 of 32 bytes") from None


def _create_key_file(path: pathlib.Path, content: str) -> None:
    """Write a temporary 0600 file, then hard-link it into place: readers never see a partial
    file, and a key another process created first is kept, never overwritten."""
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_CHECK_PURPOSE = "master-key-check-v1"


def check_value(wrapper: KeyWrapper) -> str:
    """A KCV-like check value of the wrapper's master key (PROTOCOL §6): 16 hex digits of
    SHA-256 over a key derived for this purpose alone. It tells keys apart and reveals none."""
    return hashlib.sha256(wrapper.derive(_CHECK_PURPOSE)).hexdigest()[:16]
