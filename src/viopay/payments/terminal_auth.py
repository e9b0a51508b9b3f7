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
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.deps import runtime_of
from viopay.devices.authn import FREE_FORM_RE, parse_user_agent, seen_changes, version_below
from viopay.devices.models import Device, Terminal
from viopay.errors import (
    AppVersionUnsupported,
    DeviceDisabled,
    InvalidHeader,
    InvalidSignature,
    UnknownKey,
    UnknownTerminal,
)
from viopay.keysets.models import KeySet, KeySetKey, KeySetStatus
from viopay.keysets.service import serves_charges, unwrap_stored_key
from viopay.payments import native
from viopay.runtime import Runtime
from viopay.signatures import check_timestamp, header, parse_signed_headers, spend_nonce
from viopay_device.protocol.errors import SignatureMismatch
from viopay_device.protocol.signing import charge_string_to_sign, verify_signature

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
    key_set: ServingSet | None = field(default=None, repr=False)  # X-Key-Id's, as read
    rotate_requested: bool = False  # an operator asked this set to rotate (issue 12)


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
    version = parse_user_agent(request)
    if header(request, "X-Client-Type") != "pos":
        raise InvalidHeader("X-Client-Type", "must be pos")
    return terminal_id, version


def idempotency_key_of(request: Request) -> str | None:
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


async def signed_request(request: Request) -> SignedRequest:
    """The first step of the §1 order for charge endpoints, with no I/O: headers present and
    well formed, the version (426). The rest (:func:`authenticate`) runs inside the payment
    flow's first transaction."""
    terminal_id, version = _charge_headers(request)
    signed = parse_signed_headers(request)
    idempotency_key = idempotency_key_of(request)
    minimum = runtime_of(request).settings.min_pos_version
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


# One statement for the whole lookup (terminal ⨝ device, and the key set and MAC key that
# X-Key-Id names, outer-joined so an unknown key still finds the terminal). Core, not ORM: no
# identity map or unit of work on the hot path.
_T, _D, _KS, _K = Terminal.__table__, Device.__table__, KeySet.__table__, KeySetKey.__table__
_LOOKUP = (
    select(
        _T.c.retired_at.label("terminal_retired_at"),
        _T.c.merchant_id,
        _T.c.currency,
        _D.c.device_id,
        _D.c.terminal_id.label("device_terminal_id"),
        _D.c.disabled,
        _D.c.app_version,
        _D.c.last_seen_at,
        _KS.c.key_set_id,
        _KS.c.terminal_id.label("key_set_terminal_id"),
        _KS.c.status,
        _KS.c.expires_at,
        _KS.c.retires_at,
        _KS.c.activated_at,
        _KS.c.envelope_count,
        _KS.c.msk_key_id,
        _KS.c.rotate_requested_at,
        _K.c.key_id,
        _K.c.type.label("key_type"),
        _K.c.key_wrapped,
    )
    .select_from(
        _T.join(_D, _D.c.device_id == _T.c.device_id)
        .outerjoin(_KS, _KS.c.hmac_key_id == bindparam("key_id"))
        .outerjoin(_K, (_K.c.key_set_id == _KS.c.key_set_id) & (_K.c.key_id == bindparam("key_id")))
    )
    .where(_T.c.terminal_id == bindparam("terminal_id"))
)


_LOOKUP_PG = native.Compiled.of(_LOOKUP)


@dataclass(frozen=True)
class ServingSet:
    """The columns of a key set that decide whether it serves charges (§2.4, §3.10)."""

    key_set_id: str
    terminal_id: str
    status: KeySetStatus
    expires_at: datetime
    retires_at: datetime | None
    activated_at: datetime | None
    envelope_count: int
    msk_key_id: str


@dataclass(frozen=True)
class _MacKey:
    key_id: str
    key_wrapped: bytes = field(repr=False)


async def authenticate(
    db: AsyncSession, *, runtime: Runtime, signed: SignedRequest, now: datetime
) -> AuthenticatedTerminal:
    """Terminal known and not retired (401) and its device enabled (403) → ``X-Key-Id`` a MAC
    key of the terminal's serving sets (401) → timestamp → signature → nonce (spent only once
    the signature verified). Runs in the caller's transaction: one SELECT, and an UPDATE of the
    device's ``last_seen_at`` at most once a minute."""
    terminal_id = signed.terminal_id
    params = {"terminal_id": terminal_id, "key_id": signed.key_id}
    if native.on_postgres(db):
        row = await native.fetch_row(db, _LOOKUP_PG, params)
    else:
        row = (await db.execute(_LOOKUP, params)).first()
    if row is None or row.terminal_retired_at is not None or row.device_terminal_id != terminal_id:
        raise UnknownTerminal()
    if row.disabled:
        raise DeviceDisabled()
    key_set = None
    if row.key_set_id is not None:
        key_set = ServingSet(
            row.key_set_id,
            row.key_set_terminal_id,
            KeySetStatus(row.status),
            row.expires_at,
            row.retires_at,
            row.activated_at,
            row.envelope_count,
            row.msk_key_id,
        )
    if (
        key_set is None
        or key_set.terminal_id != terminal_id
        or not serves_charges(key_set, now=now)
    ):
        raise UnknownKey("X-Key-Id is not a key of this terminal")
    check_timestamp(signed.moment, now=now)
    if row.key_id is None or row.key_type != "MAC":
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
    mac = unwrap_stored_key(runtime.wrapper, _MacKey(row.key_id, row.key_wrapped))
    try:
        verify_signature(mac, message, signed.signature)
    except SignatureMismatch:
        raise InvalidSignature() from None
    await spend_nonce(
        runtime.cache,
        scope=f"terminal:{terminal_id}",
        nonce=signed.nonce,
        moment=signed.moment,
        now=now,
    )
    await _touch(db, row, version=signed.version, now=now)
    return AuthenticatedTerminal(
        terminal_id=terminal_id,
        device_id=row.device_id,
        merchant_id=row.merchant_id,
        currency=row.currency,
        key_set_id=key_set.key_set_id,
        msk_key_id=key_set.msk_key_id,
        envelope_count=key_set.envelope_count,
        key_set_activated_at=key_set.activated_at,
        key_set=key_set,
        rotate_requested=row.rotate_requested_at is not None,
        method=signed.method,
        path=signed.path,
        query=signed.query,
        nonce=signed.nonce,
        idempotency_key=signed.idempotency_key,
        version=signed.version,
        body=signed.body,
    )


async def _touch(db: AsyncSession, row: Any, *, version: str, now: datetime) -> None:
    """The device's :func:`seen_changes`, as one UPDATE when there are any."""
    changes = seen_changes(
        last_seen_at=row.last_seen_at, app_version=row.app_version, version=version, now=now
    )
    if changes:
        await db.execute(update(Device).where(Device.device_id == row.device_id).values(**changes))
