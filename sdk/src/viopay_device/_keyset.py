"""Opening a key set delivered by POST /pos/keys (PROTOCOL.md §3.6)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from viopay_device._json import Fields
from viopay_device.errors import KeyCheckMismatch, ProtocolError
from viopay_device.keystore import KeySet
from viopay_device.protocol.errors import CryptoError, KeyBlockError
from viopay_device.protocol.kcv import kcv_for
from viopay_device.protocol.keyblocks import KEY_TYPES, WRAPPED_BY, unwrap_key
from viopay_device.protocol.transport import derive_ktk, x25519_shared


def _b64_32(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not base64") from None
    if len(raw) != 32:
        raise ProtocolError(f"{what} must be 32 bytes")
    return raw


def _entries_by_type(keys: object) -> dict[str, Mapping[str, Any]]:
    if not isinstance(keys, list):
        raise ProtocolError("keys: member 'keys' must be a list")
    by_type: dict[str, Mapping[str, Any]] = {}
    for entry in keys:
        key_type = Fields(entry, "keys[]").text("type")
        if key_type not in KEY_TYPES or key_type in by_type:
            raise ProtocolError(f"keys: unexpected or repeated key type {key_type!r}")
        assert isinstance(entry, Mapping)  # checked by Fields
        by_type[key_type] = entry
    if len(by_type) != len(KEY_TYPES):
        raise ProtocolError("keys: the key set must hold all six key types")
    return by_type


def open_key_set(
    doc: object, *, private_key: bytes, identity_secret: bytes, device_id: str
) -> KeySet:
    """Unwrap TMK under the KTK, KEK under the TMK and the rest under the KEK, checking each
    block's type, its ``wrapped_by`` and its KCV. Raises KeyCheckMismatch or ProtocolError."""
    f = Fields(doc, "keys")
    key_set_id = f.text("key_set_id")
    server_public = _b64_32(f.text("server_transport_key"), "server_transport_key")
    by_type = _entries_by_type(f.raw("keys"))
    try:
        shared = x25519_shared(private_key, server_public)
    except (CryptoError, ValueError):
        raise ProtocolError("server_transport_key is not a usable X25519 key") from None
    ktk = derive_ktk(
        shared=shared, identity_secret=identity_secret, key_set_id=key_set_id, device_id=device_id
    )
    wrapping: dict[str, bytes] = {"KTK": ktk}
    keys: dict[str, bytes] = {}
    key_ids: dict[str, str] = {}
    kcvs: dict[str, str] = {}
    for key_type in KEY_TYPES:  # table order: every wrapping key precedes what it wraps
        entry = Fields(by_type[key_type], f"keys[{key_type}]")
        if entry.text("wrapped_by") != WRAPPED_BY[key_type]:
            raise KeyCheckMismatch(key_type, "wrapped by the wrong key type")
        try:
            key = unwrap_key(
                wrapping[WRAPPED_BY[key_type]], entry.text("key_block"), expected_type=key_type
            )
        except KeyBlockError:
            raise KeyCheckMismatch(key_type, "key block does not unwrap as its type") from None
        kcv = entry.text("kcv").upper()
        if not hmac.compare_digest(kcv_for(key_type, key).upper(), kcv):
            raise KeyCheckMismatch(key_type)
        keys[key_type] = wrapping[key_type] = key
        key_ids[key_type] = entry.text("key_id")
        kcvs[key_type] = kcv
    return KeySet(
        key_set_id=key_set_id,
        keys=keys,
        key_ids=key_ids,
        kcvs=kcvs,
        created_at=f.opt_time("created_at"),
        expires_at=f.opt_time("expires_at"),
    )
