"""The server's KeyWrapper: every key at rest sealed under one of its master keys, each blob
naming the master key that sealed it, so a rotation can re-wrap keys while servers keep serving.

Blob (v2): ``0x02 || n || master_key_id (n ASCII bytes) || 12-byte IV || AES-256-GCM ciphertext
|| 16-byte tag``, AAD = the caller's context. The AES-GCM operation runs where the master key
lives: in process memory for a key file (``SoftwareMasterKey``), inside the token for an HSM
(``viopay.crypto.pkcs11.HsmMasterKey``, CKM_AES_GCM). Blobs of the first format (``0x01``, no
id: ``MasterKeyWrapper``) still open with the software key that wrote them, until a rotation
re-wraps them.

Derived keys (``derive(purpose)``: the idempotency fingerprint key, the pairing-code, API-client
and portal-cookie keys) are not computed from the master key here: they are random keys stored
wrapped like any other (``derived_keys`` table), loaded once per process with
``set_derived`` — so a master-key rotation re-wraps them instead of changing them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from viopay.crypto.wrapping import (
    _DERIVE_INFO,
    _WRAP_INFO,
    MASTER_KEY_LENGTH,
    MasterKeyWrapper,
    _hkdf,
)
from viopay_device.protocol.errors import EnvelopeNotOpened

BLOB_V2 = 0x02
IV_LENGTH = 12
TAG_LENGTH = 16
_KCV_AAD = b"viopay-kcv"
_ID_INFO = b"viopay-master-key-id-v1"


class MasterKey(Protocol):
    """One master key: AES-256-GCM under a key that never leaves where it lives."""

    @property
    def key_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Plaintext, or EnvelopeNotOpened."""
        ...


def key_check_value(key: MasterKey) -> str:
    """Six hex digits that name a master key without revealing it: the first 3 bytes of its
    AES-GCM encryption of 16 zero bytes under a zero IV and a fixed AAD (used for nothing else)."""
    return key.seal(bytes(IV_LENGTH), bytes(16), _KCV_AAD)[:3].hex().upper()


class SoftwareMasterKey:
    """A 32-byte master key in process memory (VIOPAY_MASTER_KEY or a key file)."""

    __slots__ = ("_aead", "_legacy", "_master", "key_id")

    kind = "file"

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_LENGTH:
            raise ValueError("master key must be 32 bytes")
        self._master = bytes(master_key)
        self._aead = AESGCM(_hkdf(self._master, _WRAP_INFO))
        self._legacy = MasterKeyWrapper(self._master)
        self.key_id = "f" + _hkdf(self._master, _ID_INFO)[:8].hex()

    def __repr__(self) -> str:
        return f"SoftwareMasterKey({self.key_id}, <key hidden>)"

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(iv, plaintext, aad)

    def open(self, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise EnvelopeNotOpened("decryption failed") from None

    def open_legacy(self, blob: bytes, *, context: str) -> bytes:
        """A 0x01 blob of MasterKeyWrapper (written before blobs named their master key)."""
        return self._legacy.unwrap(blob, context=context)

    def legacy_derive(self, purpose: str) -> bytes:
        """What ``derive(purpose)`` was before derived keys were stored: the first value of a
        stored derived key, so digests made before (API-client secrets) keep verifying."""
        return _hkdf(self._master, _DERIVE_INFO + purpose.encode("utf-8"))


def blob_prefix(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return bytes([BLOB_V2, len(raw)]) + raw


def blob_master_key_id(blob: bytes) -> str | None:
    """The id of the master key that sealed ``blob``; None for a first-format blob."""
    if len(blob) < 2 or blob[0] != BLOB_V2:
        return None
    return blob[2 : 2 + blob[1]].decode("ascii", "replace")


class Keyring:
    """KeyWrapper over several master keys: wraps under the active one, unwraps under the one
    each blob names. ``resolve`` finds a key this process does not hold yet (a rotation started
    by another process), or None."""

    def __init__(
        self, active: MasterKey, *, resolve: Callable[[str], MasterKey | None] | None = None
    ) -> None:
        self._keys: dict[str, MasterKey] = {active.key_id: active}
        self._active = active
        self._resolve = resolve
        self._derived: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Keyring(active={self._active.key_id}, keys={sorted(self._keys)})"

    @property
    def active(self) -> MasterKey:
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def key(self, key_id: str) -> MasterKey | None:
        found = self._keys.get(key_id)
        if found is None and self._resolve is not None:
            found = self._resolve(key_id)
            if found is not None:
                with self._lock:
                    self._keys[key_id] = found
        return found

    def add(self, key: MasterKey) -> None:
        with self._lock:
            self._keys[key.key_id] = key

    def activate(self, key_id: str) -> None:
        key = self.key(key_id)
        if key is None:
            raise LookupError(f"master key {key_id} is not available to this process")
        self._active = key

    def drop(self, key_ids: Iterable[str]) -> None:
        with self._lock:
            for key_id in key_ids:
                if key_id != self._active.key_id:
                    self._keys.pop(key_id, None)

    def wrap(self, plaintext: bytes, *, context: str) -> bytes:
        key = self._active
        iv = os.urandom(IV_LENGTH)
        return blob_prefix(key.key_id) + iv + key.seal(iv, plaintext, context.encode())

    def unwrap(self, blob: bytes, *, context: str) -> bytes:
        key_id = blob_master_key_id(blob)
        if key_id is None:
            return self._unwrap_legacy(blob, context=context)
        key = self.key(key_id)
        start = 2 + blob[1]
        if key is None or len(blob) < start + IV_LENGTH + TAG_LENGTH:
            raise EnvelopeNotOpened("decryption failed")
        iv = blob[start : start + IV_LENGTH]
        return key.open(iv, blob[start + IV_LENGTH :], context.encode())

    def _unwrap_legacy(self, blob: bytes, *, context: str) -> bytes:
        for key in list(self._keys.values()):
            if isinstance(key, SoftwareMasterKey):
                try:
                    return key.open_legacy(blob, context=context)
                except EnvelopeNotOpened:
                    continue
        raise EnvelopeNotOpened("decryption failed")

    def rewrap(self, blob: bytes, *, context: str) -> bytes:
        """``blob`` sealed again under the active key (the same bytes if it already is)."""
        if blob_master_key_id(blob) == self._active.key_id:
            return blob
        return self.wrap(self.unwrap(blob, context=context), context=context)

    def derive(self, purpose: str) -> bytes:
        try:
            return self._derived[purpose]
        except KeyError:
            raise RuntimeError(
                f"derived key {purpose!r} not loaded (viopay.masterkeys.load_derived_keys)"
            ) from None

    def set_derived(self, purpose: str, key: bytes) -> None:
        self._derived[purpose] = bytes(key)
