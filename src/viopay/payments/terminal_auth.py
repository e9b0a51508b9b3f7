"""HMAC charge headers (PROTOCOL §2.4) and the terminal they authenticate.

:func:`signed_request` (a dependency, no I/O) and :func:`authenticate` (inside the payment
flow's first transaction) run the authentication half of the §1 order for charge endpoints:
headers present and well formed, the version (426) → terminal known and not retired (401
unknown_terminal) and its device enabled (403) → ``X-Key-Id`` the MAC key of the terminal's
active set, or of the previous set within its rotation grace (401 unknown_key) → timestamp →
signature over the exact bytes received → nonce, spent only once the signature verified.
What follows (envelope limit, idempotency, body) is the payments package's.

Authentication shares the flow's first transaction, so a keyed charge costs two in all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.activation.keysets import serves_charges, unwrap_stored_key
from viopay.activation.models import KeySet, KeySetKey
from viopay.crypto.errors import SignatureMismatch
from viopay.crypto.signing import charge_string_to_sign, verify_signature
from viopay.deps import RuntimeDep
from viopay.devices.authn import FREE_FORM_RE, USER_AGENT_RE, touch, version_below
from viopay.devices.models import Device, Terminal
from viopay.errors import (
    AppVersionUnsupported,
    DeviceDisabled,
    InvalidHeader,
    InvalidSignature,
    UnknownKey,
    UnknownTerminal,
)
from viopay.runtime import Runtime
from viopay.signatures import check_timestamp, header, parse_signed_headers, spend_nonce

IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7E]{1,255}")


@dataclass(frozen=True)
class AuthenticatedTerminal:
    """A charge request whose signature verified, and what it was made by."""

    terminal_id: str
    device_id: str
    merchant_id: str
    currency: str
    # The key set of X-Key-Id, as read when the request arrived.
    key_set_id: str
    msk_key_id: str
    envelope_count: int
    key_set_activated_at: datetime | None
    method: str
    path: str  # as sent, without the query
    query: str
    nonce: str
    idempotency_key: str | None
    version: str
    body: bytes = field(repr=False)


def raw_target(request: Request) -> tuple[str, str]:
    """PATH as sent (without the query) and the raw QUERY (§2.4)."""
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    path, _, _ = bytes(raw).partition(b"?")
    query = bytes(request.scope.get("query_string", b""))
    return path.decode("latin-1"), query.decode("latin-1")


def _charge_headers(request: Request) -> tuple[str, str]:
    """X-Terminal-Id, User-Agent and X-Client-Type; returns (terminal id, app version)."""
    terminal_id = header(request, "X-Terminal-Id")
    if not FREE_FORM_RE.fullmatch(terminal_id):
        raise InvalidHeader(
            "X-Terminal-Id", "must be 1-128 printable ASCII characters without spaces"
        )
    match = USER_AGENT_RE.match(header(request, "User-Agent"))
    if match is None:
        raise InvalidHeader("User-Agent", "must be Viopay-POS/{semver} ({os}; {model})")
    if header(request, "X-Client-Type") != "pos":
        raise InvalidHeader("X-Client-Type", "must be pos")
    return terminal_id, match["version"]


def _idempotency_key(request: Request) -> str | None:
    """Optional on POST (1-255 printable ASCII); GET ignores it (§4.5)."""
    if request.method == "GET":
        return None
    value = request.headers.get("Idempotency-Key")
    if value is not None and not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidHeader(
            "Idempotency-Key", "must be 1-255 printable ASCII characters without spaces"
        )
    return value


@dataclass(frozen=True)
class SignedRequest:
    """A charge request whose headers are present and well formed (nothing looked up yet)."""

    terminal_id: str
    key_id: str
    timestamp: str
    moment: datetime
    nonce: str
    signature: str
    method: str
    path: str
    query: str
    idempotency_key: str | None
    version: str
    content_type: str | None
    body: bytes = field(repr=False)


async def signed_request(request: Request, runtime: RuntimeDep) -> SignedRequest:
    """The first step of the §1 order for charge endpoints, with no I/O: headers present and
    well formed, the version (426). The rest (:func:`authenticate`) runs inside the payment
    flow's first transaction."""
    terminal_id, version = _charge_headers(request)
    signed = parse_signed_headers(request)
    idempotency_key = _idempotency_key(request)
    minimum = runtime.settings.min_pos_version
    if version_below(version, minimum):
        raise AppVersionUnsupported(minimum)
    body = await request.body()
    path, query = raw_target(request)
    return SignedRequest(
        terminal_id=terminal_id,
        key_id=signed.key_id,
        timestamp=signed.timestamp,
        moment=signed.moment,
        nonce=signed.nonce,
        signature=signed.signature,
        method=request.method.upper(),
        path=path,
        query=query,
        idempotency_key=idempotency_key,
        version=version,
        content_type=request.headers.get("content-type"),
        body=body,
    )


CurrentRequest = Annotated[SignedRequest, Depends(signed_request)]


async def authenticate(
    db: AsyncSession, *, runtime: Runtime, signed: SignedRequest, now: datetime
) -> AuthenticatedTerminal:
    """Terminal known and not retired (401) and its device enabled (403) → ``X-Key-Id`` a MAC
    key of the terminal's serving sets (401) → timestamp → signature → nonce (spent only once
    the signature verified). Runs in the caller's transaction."""
    terminal_id = signed.terminal_id
    # Two joined reads (terminal + device, key set + its MAC key) rather than four lookups.
    found = (
        await db.execute(
            select(Terminal, Device)
            .join(Device, Device.device_id == Terminal.device_id)
            .where(Terminal.terminal_id == terminal_id)
        )
    ).first()
    terminal, device = found if found is not None else (None, None)
    if terminal is None or terminal.retired_at is not None:
        raise UnknownTerminal()
    if device is None or device.terminal_id != terminal_id:
        raise UnknownTerminal()
    if device.disabled:
        raise DeviceDisabled()
    keyed = (
        await db.execute(
            select(KeySet, KeySetKey)
            .join(KeySetKey, KeySetKey.key_set_id == KeySet.key_set_id)
            .where(KeySet.hmac_key_id == signed.key_id, KeySetKey.key_id == signed.key_id)
        )
    ).first()
    key_set, mac_row = keyed if keyed is not None else (None, None)
    if key_set is None or key_set.terminal_id != terminal_id or not serves_charges(key_set, now=now):
        raise UnknownKey("X-Key-Id is not a key of this terminal")
    check_timestamp(signed.moment, now=now)
    if mac_row is None or mac_row.type != "MAC":
        raise UnknownKey("X-Key-Id is not a key of this terminal")
    message = charge_string_to_sign(
        method=signed.method,
        path=signed.path,
        query=signed.query,
        body=signed.body,
        terminal_id=terminal_id,
        timestamp=signed.timestamp,
        nonce=signed.nonce,
    )
    try:
        verify_signature(unwrap_stored_key(runtime.wrapper, mac_row), message, signed.signature)
    except SignatureMismatch:
        raise InvalidSignature() from None
    await spend_nonce(
        runtime.cache,
        scope=f"terminal:{terminal_id}",
        nonce=signed.nonce,
        moment=signed.moment,
        now=now,
    )
    touch(device, version=signed.version, now=now)
    return AuthenticatedTerminal(
        terminal_id=terminal_id,
        device_id=device.device_id,
        merchant_id=terminal.merchant_id,
        currency=terminal.currency,
        key_set_id=key_set.key_set_id,
        msk_key_id=key_set.msk_key_id,
        envelope_count=key_set.envelope_count,
        key_set_activated_at=key_set.activated_at,
        method=signed.method,
        path=signed.path,
        query=signed.query,
        nonce=signed.nonce,
        idempotency_key=signed.idempotency_key,
        version=signed.version,
        body=signed.body,
    )
