"""HMAC charge headers (PROTOCOL §2.4) and the terminal they authenticate.

:func:`signed_request` (a dependency, no I/O) and :func:`authenticate` (inside the payment
flow's first transaction) run the authentication half of the §1 order for charge endpoints:
headers present and well formed, the version (426) → terminal known and not retired (401
unknown_terminal) and its device enabled (403) → ``X-Key-Id`` the MAC key of the terminal's
active set, or of the previous set within its rotation grace (401 unknown_key) → timestamp →
signature over the exact bytes received → nonce, spent only once the signature verified.
What follows (envelope limit, idempotency, body) is the payments package's.

Authentication shares the flow's first transaction, so a keyed charge costs two in all. On
PostgreSQL the lookup row is remembered per process (:func:`authenticate_remembered`); the flow
writes on it only in a statement that finds the row unchanged.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import bindparam, event, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from viopay.deps import runtime_of
from viopay.devices.authn import FREE_FORM_RE, parse_user_agent, seen_changes, version_below
from viopay.devices.models import Device, Terminal
from viopay.errors import (
    AppVersionUnsupported,
    DeviceDisabled,
    InvalidHeader,
    InvalidSignature,
    NonceReused,
    UnknownKey,
    UnknownTerminal,
)
from viopay.keysets.models import KeySet, KeySetKey, KeySetStatus
from viopay.keysets.service import serves_charges, unwrap_stored_key
from viopay.payments import native
from viopay.runtime import Runtime
from viopay.settings import TERMINAL_CACHE_SIZE
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


LOOKUP_PG = native.Compiled.of(_LOOKUP)


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
    db: AsyncSession,
    *,
    runtime: Runtime,
    signed: SignedRequest,
    now: datetime,
    nonce_spent: bool = False,
) -> AuthenticatedTerminal:
    """Terminal known and not retired (401) and its device enabled (403) → ``X-Key-Id`` a MAC
    key of the terminal's serving sets (401) → timestamp → signature → nonce (spent only once
    the signature verified; ``nonce_spent``: :func:`authenticate_remembered` spent it for this
    request). Runs in the caller's transaction: one SELECT, and an UPDATE of the device's
    ``last_seen_at`` at most once a minute. On PostgreSQL the row read is remembered for
    :func:`authenticate_remembered`."""
    params = {"terminal_id": signed.terminal_id, "key_id": signed.key_id}
    record = None
    if native.on_postgres(db):
        record = await native.fetch_record(db, LOOKUP_PG, params)
        row: Any = None if record is None else native.Row(record)
    else:
        row = (await db.execute(_LOOKUP, params)).first()
    key_set = _check(row, runtime=runtime, signed=signed, now=now)
    if not nonce_spent:
        await _spend_nonce(runtime, signed, now=now)
    changes = seen_changes(
        last_seen_at=row.last_seen_at, app_version=row.app_version, version=signed.version, now=now
    )
    if changes:
        await db.execute(update(Device).where(Device.device_id == row.device_id).values(**changes))
    if record is not None:
        entry = _remember(signed, record)
        if changes:  # written once the caller's transaction commits (a rollback takes it back)
            db.info.setdefault(_SEEN_PENDING, []).append((entry, changes))
    return _authenticated(row, key_set, signed)


def _check(row: Any, *, runtime: Runtime, signed: SignedRequest, now: datetime) -> ServingSet:
    """The checks of :func:`authenticate` up to the signature, on a lookup row."""
    terminal_id = signed.terminal_id
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
    return key_set


async def _spend_nonce(runtime: Runtime, signed: SignedRequest, *, now: datetime) -> None:
    await spend_nonce(
        runtime.cache,
        scope=f"terminal:{signed.terminal_id}",
        nonce=signed.nonce,
        moment=signed.moment,
        now=now,
    )


def _authenticated(row: Any, key_set: ServingSet, signed: SignedRequest) -> AuthenticatedTerminal:
    return AuthenticatedTerminal(
        terminal_id=signed.terminal_id,
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


# --- the lookup as this process last read it (PostgreSQL) -------------------------------------


@dataclass
class Remembered:
    """A lookup row this process read, and what it since wrote of the device's ``last_seen_at``
    and ``app_version`` (the row's own copies of those go stale by design)."""

    record: asyncpg.Record = field(repr=False)
    last_seen_at: datetime | None
    app_version: str | None

    def changes(self, *, version: str, now: datetime) -> dict[str, object]:
        """What a request now writes of the device (:func:`seen_changes`), as this process knows it."""
        return seen_changes(
            last_seen_at=self.last_seen_at, app_version=self.app_version, version=version, now=now
        )

    def written(self, changes: dict[str, Any]) -> None:
        """``changes`` (of :meth:`changes`) reached the database."""
        self.last_seen_at = changes.get("last_seen_at", self.last_seen_at)
        self.app_version = changes.get("app_version", self.app_version)


# (terminal, X-Key-Id) pairs per process, the least recently used first to go: a fleet's
# terminals come round in turn (every heartbeat a minute), so it is sized for all of a process's
# terminals (VIOPAY_TERMINAL_CACHE_SIZE, set by configure_memory() at start-up).
_capacity = TERMINAL_CACHE_SIZE
_REMEMBERED: OrderedDict[tuple[str, str], Remembered] = OrderedDict()


def configure_memory(terminals: int) -> None:
    """Room for ``terminals`` lookup rows (one per terminal and ``X-Key-Id``)."""
    global _capacity  # noqa: PLW0603 - the process's memory, sized once at start-up
    _capacity = terminals
    _forget_oldest()


def _remember(signed: SignedRequest, record: asyncpg.Record) -> Remembered:
    entry = Remembered(record, record["last_seen_at"], record["app_version"])
    _REMEMBERED[(signed.terminal_id, signed.key_id)] = entry
    _forget_oldest()
    return entry


# A session's remembered rows whose last_seen_at/app_version write its transaction holds.
_SEEN_PENDING = "viopay.seen_pending"


@event.listens_for(Session, "after_commit")
def _seen_committed(session: Session) -> None:
    for entry, changes in session.info.pop(_SEEN_PENDING, ()):
        entry.written(changes)


@event.listens_for(Session, "after_rollback")
def _seen_rolled_back(session: Session) -> None:
    session.info.pop(_SEEN_PENDING, None)


def _forget_oldest() -> None:
    while len(_REMEMBERED) > _capacity:
        _REMEMBERED.popitem(last=False)


def forget(signed: SignedRequest) -> None:
    _REMEMBERED.pop((signed.terminal_id, signed.key_id), None)


async def authenticate_remembered(
    runtime: Runtime, signed: SignedRequest, *, now: datetime
) -> tuple[AuthenticatedTerminal, Remembered] | None:
    """:func:`authenticate` on the row this process last read for the terminal and
    ``X-Key-Id``, without reading it again: the caller's one statement then writes only if the
    row still reads the same (:data:`viopay.payments.native.CLAIM_REMEMBERED`). None, the row
    forgotten, when there is none or any check refuses on it: the caller then authenticates
    afresh, so every refusal is decided on a fresh read, in the §1 order."""
    remembered = (signed.terminal_id, signed.key_id)
    entry = _REMEMBERED.get(remembered)
    if entry is None:
        return None
    _REMEMBERED.move_to_end(remembered)
    row = native.Row(entry.record)
    try:
        key_set = _check(row, runtime=runtime, signed=signed, now=now)
    except Exception:  # noqa: BLE001 - any refusal (or failure) is decided again on a fresh read
        forget(signed)
        return None
    try:
        await _spend_nonce(runtime, signed, now=now)
    except NonceReused:
        forget(signed)  # a fresh read decides whether a 403 or another 401 comes first (§1)
        return None
    return _authenticated(row, key_set, signed), entry
