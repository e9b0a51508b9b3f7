"""The MSK channel of the charge endpoints (§2.4, §3.7, §3.10): opening request envelopes
(and the card's TDK envelope), sealing answers, and the key set's envelope budget.

A request envelope may name the MSK of the terminal's active set or of the previous set within
its grace; the answer is sealed under the MSK that sealed the request, or, for a request
without a body, under the MSK of ``X-Key-Id``'s set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import orjson
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.bodies import parse_json
from viopay.crypto.wrapping import KeyWrapper
from viopay.errors import DecryptionFailed, InvalidRequest, UnsupportedMediaType
from viopay.keysets.models import KeySet, KeySetKey
from viopay.keysets.service import (
    SetKeys,
    SetState,
    cached_keys,
    key_set_by_msk_key_id,
    load_keys,
    serves_charges,
)
from viopay.payments.terminal_auth import AuthenticatedTerminal
from viopay_device.protocol import envelope as env
from viopay_device.protocol.errors import EnvelopeMalformed
from viopay_device.protocol.errors import EnvelopeNotOpened as EnvelopeUnopened

KEY_SET_LIFETIME = timedelta(days=30)
ROTATE_AT = 0.9  # of the envelope limit and of the lifetime (§3.10)


# --- the envelope budget --------------------------------------------------------------------


@dataclass(frozen=True)
class KeySetUsage:
    rotate: bool  # from 90 %: answers carry "rotate_keys": true
    exhausted: bool  # past the limit: charge and refund answer 409 invalid_state


def key_set_usage(auth: AuthenticatedTerminal, *, max_envelopes: int, now: datetime) -> KeySetUsage:
    """Counted on the set of the request's X-Key-Id (§3.10)."""
    count = auth.envelope_count
    age = now - auth.key_set_activated_at if auth.key_set_activated_at else timedelta(0)
    return KeySetUsage(
        rotate=auth.rotate_requested
        or count * 10 >= max_envelopes * 9
        or age >= KEY_SET_LIFETIME * ROTATE_AT,
        exhausted=count >= max_envelopes or age >= KEY_SET_LIFETIME,
    )


async def meter(db: AsyncSession, *, key_set_id: str, envelopes: int) -> None:
    """Add to the set's MSK tally (one Core UPDATE); a negative count gives back envelopes
    counted up front (:func:`count_up_front`) that were not sealed."""
    if envelopes:
        await db.execute(_METER, {"key_set": key_set_id, "count": envelopes})


async def count_up_front(
    db: AsyncSession, *, key_set_id: str, envelopes: int, limit: int | None
) -> bool:
    """Count a request's envelopes and its answer's on the set's tally before anything else
    of its first transaction, only if they fit under ``limit`` (None: always). False, counting
    nothing, when they do not: the request is refused, so a burst of charges on a set near
    its limit is admitted exactly (§3.10). The set's row stays locked to the end of the
    transaction: every charge-endpoint transaction takes it first (one lock order)."""
    params = {"key_set": key_set_id, "count": envelopes}
    if limit is None:
        await db.execute(_METER, params)
        return True
    counted = await db.execute(_METER_WITHIN, {**params, "limit": limit})
    return bool(getattr(counted, "rowcount", 0))


_SETS = cast(Table, KeySet.__table__)
_METER = (
    update(_SETS)
    .where(_SETS.c.key_set_id == bindparam("key_set"))
    .values(envelope_count=_SETS.c.envelope_count + bindparam("count"))
)
_METER_WITHIN = _METER.where(_SETS.c.envelope_count + bindparam("count") <= bindparam("limit"))


# --- opening requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedRequest:
    """A request's decrypted plaintext and the MSK its answer is sealed under."""

    plaintext: dict[str, Any] = field(repr=False)
    key_set_id: str  # the set of the MSK that sealed the request (or X-Key-Id's, bodyless)
    kid: str
    msk: bytes = field(repr=False)
    envelopes_opened: int  # MSK envelopes opened (0 or 1)
    card: dict[str, Any] | None = field(default=None, repr=False)
    tpk: bytes | None = field(default=None, repr=False)  # of the card envelope's key set


class _Set(SetState, Protocol):
    @property
    def key_set_id(self) -> str: ...
    @property
    def terminal_id(self) -> str: ...


def _usable(key_set: _Set | None, auth: AuthenticatedTerminal, now: datetime) -> _Set:
    if (
        key_set is None
        or key_set.terminal_id != auth.terminal_id
        or not serves_charges(key_set, now=now)
    ):
        raise DecryptionFailed()
    return key_set


def _parse(obj: object) -> env.Envelope:
    try:
        return env.parse_envelope(obj)
    except EnvelopeMalformed as exc:
        raise InvalidRequest(str(exc)) from None
    except EnvelopeUnopened:
        raise DecryptionFailed() from None


def _open(key: bytes, envelope: env.Envelope, aad: bytes) -> bytes:
    try:
        return env.open_envelope(key, envelope, aad)
    except EnvelopeUnopened:
        raise DecryptionFailed() from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise InvalidRequest(f"the {what} must be a JSON object")
    return value


class ReadNeeded(Exception):  # noqa: N818 - a signal to the caller, not an error
    """:func:`open_request` without a session (``db=None``) met a read it cannot make (keys not
    cached in this process yet, an envelope of another set): call it again with one."""


def reader(db: AsyncSession | None) -> AsyncSession:
    """``db``, or :class:`ReadNeeded` when there is none."""
    if db is None:
        raise ReadNeeded
    return db


async def _keys(db: AsyncSession | None, wrapper: KeyWrapper, key_set_id: str) -> SetKeys:
    cached = cached_keys(key_set_id)
    if cached is not None:
        return cached
    return await load_keys(reader(db), wrapper=wrapper, key_set_id=key_set_id)


async def open_request(
    db: AsyncSession | None,
    *,
    wrapper: KeyWrapper,
    auth: AuthenticatedTerminal,
    content_type: str | None,
    with_body: bool,
    with_card: bool,
    now: datetime,
) -> OpenedRequest:
    """415 unless JSON → 400 invalid_request (not an envelope) → 400 decryption_failed.
    ``db`` None: no reads (:class:`ReadNeeded` when one is needed)."""
    if not with_body:
        keys = await _keys(db, wrapper, auth.key_set_id)
        return OpenedRequest({}, auth.key_set_id, auth.msk_key_id, keys.msk, envelopes_opened=0)
    if (content_type or "").split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    envelope = _parse(_json_object(auth.body, "body"))
    # Usually the MSK of X-Key-Id's own set, already in this session (no statement).
    found: _Set | None = auth.key_set
    if envelope.kid != auth.msk_key_id or found is None:
        found = await key_set_by_msk_key_id(reader(db), envelope.kid)
    key_set = _usable(found, auth, now)
    keys = await _keys(db, wrapper, key_set.key_set_id)
    aad = env.request_aad(method=auth.method, path=auth.path, subject=auth.terminal_id)
    plaintext = _json_object(_open(keys.msk, envelope, aad), "plaintext")
    card, tpk = None, None
    if with_card and "card" in plaintext:
        card, tpk = await _open_card(
            db, wrapper=wrapper, auth=auth, obj=plaintext["card"], now=now, sealing_keys=keys
        )
    return OpenedRequest(plaintext, key_set.key_set_id, envelope.kid, keys.msk, 1, card, tpk)


async def _open_card(
    db: AsyncSession | None,
    *,
    wrapper: KeyWrapper,
    auth: AuthenticatedTerminal,
    obj: object,
    now: datetime,
    sealing_keys: SetKeys | None = None,
) -> tuple[dict[str, Any], bytes]:
    """The card's TDK envelope (AAD ``viopay-tdk-v1\\n{TERMINAL_ID}``) and that set's TPK.

    ``sealing_keys``: the (usable) set that sealed the request; a card sealed under its TDK,
    the usual case, needs no lookup of its own (key ids are unique across all sets)."""
    envelope = _parse(obj)
    if sealing_keys is not None and envelope.kid == sealing_keys.key_ids.get("TDK"):
        keys = sealing_keys
    else:
        session = reader(db)
        row = await session.scalar(select(KeySetKey).where(KeySetKey.key_id == envelope.kid))
        if row is None or row.type != "TDK":
            raise DecryptionFailed()
        key_set = _usable(await session.get(KeySet, row.key_set_id), auth, now)
        keys = await _keys(db, wrapper, key_set.key_set_id)
    card = _json_object(_open(keys.key("TDK"), envelope, env.card_aad(auth.terminal_id)), "card")
    return card, keys.key("TPK")


# --- sealing answers ------------------------------------------------------------------------


def seal_answer(
    opened: OpenedRequest, auth: AuthenticatedTerminal, plaintext: dict[str, Any], *, rotate: bool
) -> bytes:
    """The answer envelope, its AAD bound to this request's method, path, terminal and nonce."""
    if rotate:
        plaintext = {**plaintext, "rotate_keys": True}
    aad = env.response_aad(
        method=auth.method, path=auth.path, subject=auth.terminal_id, nonce=auth.nonce
    )
    return orjson.dumps(env.seal(opened.msk, opened.kid, orjson.dumps(plaintext), aad))
