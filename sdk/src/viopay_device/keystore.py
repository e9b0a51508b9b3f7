"""Where the device keeps its identity key and its delivered key sets.

:class:`KeyStore` is the interface a real terminal backs with its secure element (or its
keystore service); :class:`MemoryKeyStore` keeps everything in process memory, for tests,
simulators and tools. Key material never appears in a repr.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from viopay_device.protocol.keyblocks import KEY_TYPES

__all__ = ["IdentityKey", "KeySet", "KeyStore", "MemoryKeyStore"]

_KEY_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class IdentityKey:
    """The identity key made at provisioning: its ``key_id`` and 32-byte secret."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise ValueError("key_id must be 1-128 printable ASCII characters without spaces")
        if len(self.secret) != 32:
            raise ValueError("the identity secret must be 32 bytes")

    @classmethod
    def from_hex(cls, key_id: str, secret_hex: str) -> IdentityKey:
        """Build from the 64 hex characters shown once at provisioning."""
        try:
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            raise ValueError("the identity secret must be 64 hex characters") from None
        return cls(key_id=key_id, secret=secret)


@dataclass(frozen=True, eq=False)
class KeySet:
    """One delivered key set: six keys by type, their ids and KCVs.

    ``keys`` maps a type (``"MSK"``...) to its raw bytes; ``key_ids`` and ``kcvs`` map a type to
    the server's ``key_id`` and KCV. Equality is identity: compare ``key_set_id`` instead.
    """

    key_set_id: str
    keys: Mapping[str, bytes] = field(repr=False)
    key_ids: Mapping[str, str]
    kcvs: Mapping[str, str]
    created_at: datetime | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("keys", "key_ids", "kcvs"):
            mapping = getattr(self, name)
            if set(mapping) != set(KEY_TYPES):
                raise ValueError(f"{name} must hold exactly the types {', '.join(KEY_TYPES)}")
            object.__setattr__(self, name, MappingProxyType(dict(mapping)))

    def key(self, key_type: str) -> bytes:
        """The raw key of ``key_type``."""
        return self.keys[key_type]

    @property
    def hmac_key_id(self) -> str:
        """The MAC key's id: what the terminal sends as ``X-Key-Id``."""
        return self.key_ids["MAC"]

    @property
    def msk_kid(self) -> str:
        """The MSK's id: the ``kid`` of every envelope under this set."""
        return self.key_ids["MSK"]


@runtime_checkable
class KeyStore(Protocol):
    """The device's key storage.

    A key set moves ``pending`` (downloaded, not yet activated) → ``current`` (activated: it
    signs and seals) → ``previous`` (the set before the last activation, kept so answers sealed
    under it during the rotation grace still open). :meth:`promote_pending` makes that move
    atomically; a real implementation persists it before returning.
    """

    @property
    def identity(self) -> IdentityKey:
        """The identity key that signs attestations."""
        ...

    @property
    def current(self) -> KeySet | None:
        """The activated set, or None before the first activation."""
        ...

    @property
    def previous(self) -> KeySet | None:
        """The set that was current before the last activation, if any."""
        ...

    @property
    def pending(self) -> KeySet | None:
        """The downloaded set awaiting activation, if any."""
        ...

    def save_pending(self, key_set: KeySet) -> None:
        """Keep ``key_set`` as the pending set, replacing any earlier pending set."""
        ...

    def promote_pending(self, key_set_id: str) -> None:
        """Make the pending set ``key_set_id`` current and the old current previous."""
        ...


class MemoryKeyStore:
    """A :class:`KeyStore` in process memory."""

    def __init__(
        self,
        identity: IdentityKey,
        *,
        current: KeySet | None = None,
        previous: KeySet | None = None,
    ) -> None:
        self._identity = identity
        self._current = current
        self._previous = previous
        self._pending: KeySet | None = None

    @classmethod
    def from_hex(cls, key_id: str, identity_secret_hex: str) -> MemoryKeyStore:
        """A store for the identity key printed by ``viopay device provision``."""
        return cls(IdentityKey.from_hex(key_id, identity_secret_hex))

    @property
    def identity(self) -> IdentityKey:
        return self._identity

    @property
    def current(self) -> KeySet | None:
        return self._current

    @property
    def previous(self) -> KeySet | None:
        return self._previous

    @property
    def pending(self) -> KeySet | None:
        return self._pending

    def save_pending(self, key_set: KeySet) -> None:
        self._pending = key_set

    def promote_pending(self, key_set_id: str) -> None:
        pending = self._pending
        if pending is None or pending.key_set_id != key_set_id:
            raise ValueError(f"no pending key set {key_set_id}")
        if self._current is not None and self._current.key_set_id != key_set_id:
            self._previous = self._current
        self._current = pending
        self._pending = None

    def __repr__(self) -> str:
        def name(key_set: KeySet | None) -> str | None:
            return key_set.key_set_id if key_set else None

        return (
            f"MemoryKeyStore(key_id={self._identity.key_id!r}, "
            f"current={name(self._current)!r}, previous={name(self._previous)!r}, "
            f"pending={name(self._pending)!r})"
        )
