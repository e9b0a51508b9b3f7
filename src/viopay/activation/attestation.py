"""Attestation (PROTOCOL §2.2, §2.3): the signed attest request and the tokens it earns.

A token is ``att_`` + 43 base64url characters (32 random bytes). The server keeps only its
SHA-256, in the cache, with the device, the identity key that earned it and the device's
``token_generation``. Verification re-reads the device and the key, so disabling or releasing
the device (which bumps the generation) or revoking the key kills the token at once, and
enabling the device again does not revive it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.cache import Cache
from viopay.crypto.wrapping import KeyWrapper
from viopay.deps import DbSession, Now, RuntimeDep
from viopay.devices.authn import (
    identity_key_of,
    load_device_with_key,
    parse_device_id,
    touch,
)
from viopay.devices.models import Device, MerchantDeviceIdentityKey
from viopay.devices.service import unwrap_identity_secret
from viopay.errors import (
    InvalidToken,
)
from viopay.runtime import Runtime

TOKEN_PREFIX = "att_"
TOKEN_TTL = timedelta(seconds=300)
TOKEN_RE = re.compile(r"att_[A-Za-z0-9_-]{43}")
_SCHEME = "attestation"


# --- tokens (§2.3) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)
    expires_at: datetime


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _cache_key(token: str) -> str:
    return f"att:{token_digest(token)}"


async def issue_token(
    cache: Cache, *, device: Device, identity_key: MerchantDeviceIdentityKey, now: datetime
) -> IssuedToken:
    """A fresh token bound to the device, the identity key and the device's token generation."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = now + TOKEN_TTL
    record = {
        "device_id": device.device_id,
        "key_id": identity_key.key_id,
        "token_generation": device.token_generation,
        "issued_at": now.timestamp(),
        "expires_at": expires_at.timestamp(),
    }
    await cache.set(_cache_key(token), orjson.dumps(record), ttl=TOKEN_TTL.total_seconds())
    return IssuedToken(token=token, expires_at=expires_at)


def parse_authorization(request: Request) -> str:
    """``Authorization: Attestation att_…``; anything else is 401 invalid_token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip(" ")
    if scheme.lower() != _SCHEME or not TOKEN_RE.fullmatch(token):
        raise InvalidToken("an Attestation token is required")
    return token


async def verify_token(
    db: AsyncSession, cache: Cache, *, token: str, device: Device, now: datetime
) -> MerchantDeviceIdentityKey:
    """The token is live, of this device and its current generation, and its key is live.

    Every failure answers the same 401 invalid_token, with no hint of which check failed.
    """
    raw = await token_record(cache, token)
    key_id = _key_id(raw)
    key = None
    if key_id is not None:
        key = await identity_key_of(db, device_id=device.device_id, key_id=key_id)
    return _checked_token(raw, device=device, key=key, now=now)


def _record(raw: bytes | None) -> dict[str, Any] | None:
    """A token record as the cache holds it, parsed (None: no record, or not one of ours: only
    our own writes put records there, but a record that is not a JSON object is refused as a
    missing one, never a 500)."""
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _key_id(raw: bytes | None) -> str | None:
    """The identity key a token record names (None: no record, or not one of ours)."""
    record = _record(raw)
    key_id = record.get("key_id") if record is not None else None
    return key_id if isinstance(key_id, str) else None


def _present(raw: bytes | None) -> bytes:
    if raw is None:
        raise InvalidToken()
    return raw


def _checked_token(
    raw: bytes | None,
    *,
    device: Device,
    key: MerchantDeviceIdentityKey | None,
    now: datetime,
) -> MerchantDeviceIdentityKey:
    """The checks of :func:`verify_token` on the record and the key it names, both read."""
    record = _record(raw)
    if (
        record is None
        or record.get("device_id") != device.device_id
        or record.get("token_generation") != device.token_generation
        or not isinstance(record.get("expires_at"), int | float)
        or now.timestamp() >= record["expires_at"]
    ):
        raise InvalidToken()
    if key is None or key.revoked_at is not None:
        raise InvalidToken()
    return key


async def token_record(cache: Cache, token: str) -> bytes | None:
    """The token's record as the cache holds it (None: unknown or expired)."""
    return await cache.get(_cache_key(token))


@dataclass
class Attested:
    """The device behind a valid attestation token, and the identity key that earned it."""

    device: Device
    identity_key: MerchantDeviceIdentityKey
    wrapper: KeyWrapper = field(repr=False)
    _secret: bytes | None = field(default=None, repr=False)
    #: The token as presented, and its record as the cache held it.
    token: str = field(default="", repr=False)
    token_record: bytes = field(default=b"", repr=False)

    def identity_secret(self) -> bytes:
        """The identity key's 32-byte secret, unwrapped on first use."""
        if self._secret is None:
            self._secret = unwrap_identity_secret(self.wrapper, self.identity_key)
        return self._secret


@dataclass(frozen=True)
class TokenHeaders:
    """``Authorization`` and ``X-Device-Id``, well formed: the steps of the §1 order that read
    nothing."""

    token: str = field(repr=False)
    device_id: str


async def token_headers(request: Request) -> TokenHeaders:
    """§1 order, no I/O: Authorization (401) → X-Device-Id (400). A coroutine although it
    awaits nothing: FastAPI runs a plain function dependency in its thread pool."""
    return TokenHeaders(token=parse_authorization(request), device_id=parse_device_id(request))


async def attest_token(
    db: AsyncSession, runtime: Runtime, headers: TokenHeaders, *, now: datetime
) -> Attested:
    """The rest of the §1 order for token endpoints: device (404, 403) → token valid and bound
    to this device and a live identity key (401)."""
    record = await token_record(runtime.cache, headers.token)  # read first, decided below
    device, key = await load_device_with_key(db, headers.device_id, _key_id(record))
    key = _checked_token(record, device=device, key=key, now=now)
    touch(device, version=None, now=now)
    return Attested(
        device=device,
        identity_key=key,
        wrapper=runtime.wrapper,
        token=headers.token,
        token_record=_present(record),
    )


async def attested_device(
    request: Request, runtime: RuntimeDep, db: DbSession, now: Now
) -> Attested:
    """§1 order for token endpoints: Authorization (401) → X-Device-Id (400) → device (404,
    403) → token valid and bound to this device and a live identity key (401)."""
    return await attest_token(db, runtime, await token_headers(request), now=now)


AttestedDevice = Annotated[Attested, Depends(attested_device)]
TokenHeadersDep = Annotated[TokenHeaders, Depends(token_headers)]
