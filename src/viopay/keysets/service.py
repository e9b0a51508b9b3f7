"""Key sets (PROTOCOL §3.6, §3.10): made, delivered, activated, rotated and retired.

Every call of POST /pos/keys makes a new set of six fresh keys. The TMK travels wrapped under
a key transport key (X25519 with a one-time server pair, then HKDF with the identity secret),
the KEK under the TMK and the rest under the KEK, each as a TR-31 version D key block. At rest
the keys exist only wrapped under the master key (``KeyWrapper``, which an HSM can take over).
No function here logs a key or puts one in a message or a repr.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.crypto.wrapping import KeyWrapper
from viopay.devices.models import Device
from viopay.devices.service import unclaim_device
from viopay.errors import InvalidRequest, InvalidState
from viopay.ids import new_id
from viopay.keysets.models import KeySet, KeySetKey, KeySetStatus
from viopay.settings import TERMINAL_CACHE_SIZE
from viopay_device.protocol.errors import CryptoError
from viopay_device.protocol.kcv import kcv_for
from viopay_device.protocol.keyblocks import KEY_LENGTH, KEY_TYPES, WRAPPED_BY, wrap_key
from viopay_device.protocol.transport import derive_ktk, generate_x25519, x25519_shared

PENDING_TTL = timedelta(minutes=15)
KEY_ID_PREFIX = {key_type: key_type.lower() + "_" for key_type in KEY_TYPES}
# Key sets whose unwrapped keys a process keeps; configure_key_cache() sets it at start-up.
_SET_CAPACITY = 2 * TERMINAL_CACHE_SIZE


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveredKey:
    """One entry of the §3.6 ``keys`` list: the key block is wrapped, never the raw key."""

    type: str
    key_id: str
    wrapped_by: str
    key_block: str = field(repr=False)
    kcv: str


@dataclass(frozen=True)
class DeliveredKeySet:
    key_set: KeySet
    server_transport_key: bytes  # the one-time X25519 public key
    keys: tuple[DeliveredKey, ...]  # in table order


def _new_keys() -> dict[str, bytes]:
    return {key_type: secrets.token_bytes(KEY_LENGTH) for key_type in KEY_TYPES}


def _transport_key_error() -> InvalidRequest:
    return InvalidRequest(
        "the transport key is not usable",
        errors=[{"field": "transport_key", "message": "must be a usable X25519 public key"}],
    )


def _ktk(
    *, transport_key: bytes, identity_secret: bytes, key_set_id: str, device_id: str
) -> tuple[bytes, bytes]:
    """Return (KTK, server public key) for a fresh one-time server pair."""
    server_private, server_public = generate_x25519()
    try:
        shared = x25519_shared(server_private, transport_key)
    except CryptoError:
        raise _transport_key_error() from None
    ktk = derive_ktk(
        shared=shared, identity_secret=identity_secret, key_set_id=key_set_id, device_id=device_id
    )
    return ktk, server_public


def _key_blocks(ktk: bytes, keys: Mapping[str, bytes]) -> dict[str, str]:
    wrapping = {"KTK": ktk, **keys}
    return {
        key_type: wrap_key(wrapping[WRAPPED_BY[key_type]], key_type, keys[key_type])
        for key_type in KEY_TYPES
    }


async def create_key_set(
    db: AsyncSession,
    *,
    wrapper: KeyWrapper,
    device: Device,
    identity_key_id: str,
    identity_secret: bytes,
    transport_key: bytes,
    now: datetime,
) -> DeliveredKeySet:
    """Make, store and wrap for delivery a new pending key set of ``device``.

    The device must be claimed or activated (the route checks; so does this). A transport key
    that is not a usable X25519 public key is 400 invalid_request.
    """
    if device.terminal_id is None:
        raise InvalidState(f"device is {device.status.value}")
    key_set_id = new_id("ks_")
    ktk, server_public = _ktk(
        transport_key=transport_key,
        identity_secret=identity_secret,
        key_set_id=key_set_id,
        device_id=device.device_id,
    )
    keys = _new_keys()
    key_ids = {key_type: new_id(KEY_ID_PREFIX[key_type], 24) for key_type in KEY_TYPES}
    kcvs = {key_type: kcv_for(key_type, keys[key_type]) for key_type in KEY_TYPES}
    blocks = _key_blocks(ktk, keys)
    key_set = KeySet(
        key_set_id=key_set_id,
        device_id=device.device_id,
        terminal_id=device.terminal_id,
        identity_key_id=identity_key_id,
        status=KeySetStatus.pending,
        created_at=now,
        expires_at=now + PENDING_TTL,
        activated_at=None,
        retires_at=None,
        retired_at=None,
        envelope_count=0,
        hmac_key_id=key_ids["MAC"],
        msk_key_id=key_ids["MSK"],
    )
    db.add(key_set)
    await db.flush()  # the set before its keys (foreign key)
    delivered = []
    for key_type in KEY_TYPES:
        kcv = kcvs[key_type]
        db.add(
            KeySetKey(
                key_id=key_ids[key_type],
                key_set_id=key_set_id,
                type=key_type,
                kcv=kcv,
                key_wrapped=wrapper.wrap(keys[key_type], context=_wrap_context(key_ids[key_type])),
            )
        )
        delivered.append(
            DeliveredKey(key_type, key_ids[key_type], WRAPPED_BY[key_type], blocks[key_type], kcv)
        )
    record_event(
        db,
        type="key_set.created",
        actor=Actor("device", device.device_id),
        subject_type="key_set",
        subject_id=key_set_id,
        merchant_id=device.merchant_id,
        now=now,
        data={
            "device_id": device.device_id,
            "terminal_id": device.terminal_id,
            "identity_key_id": identity_key_id,
            "expires_at": key_set.expires_at.isoformat(),
        },
    )
    await db.flush()
    # The device asks for its config and activates next, with these keys: kept unwrapped now
    # (a set whose transaction rolls back is never looked up, its id being new).
    _keep(
        SetKeys(
            key_set_id=key_set_id,
            keys=MappingProxyType(keys),
            key_ids=MappingProxyType(key_ids),
            kcvs=MappingProxyType(kcvs),
        )
    )
    return DeliveredKeySet(
        key_set=key_set, server_transport_key=server_public, keys=tuple(delivered)
    )


# --- keys at rest -----------------------------------------------------------------------------


def _wrap_context(key_id: str) -> str:
    return f"key:{key_id}"


#: The wrapping context (AAD) of a key-set key, for the master-key rotation.
key_context = _wrap_context


def _drop_oldest(entries: OrderedDict[str, Any], size: int) -> None:
    """Keep the ``size`` most recently used ``entries``."""
    while len(entries) > size:
        entries.popitem(last=False)


class _KeyCache:
    """Unwrapped keys by key_id, in this process only. A key never changes once made, so an
    entry never goes stale; the bound keeps memory (and exposure) small."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, bytes] = OrderedDict()

    def __repr__(self) -> str:
        return f"_KeyCache(entries={len(self._keys)})"

    def get(self, key_id: str) -> bytes | None:
        key = self._keys.get(key_id)
        if key is not None:
            self._keys.move_to_end(key_id)
        return key

    def resize(self, size: int) -> None:
        self._size = size
        _drop_oldest(self._keys, size)

    def put(self, key_id: str, key: bytes) -> None:
        self._keys[key_id] = key
        self._keys.move_to_end(key_id)
        _drop_oldest(self._keys, self._size)

    def forget(self, key_ids: Sequence[str]) -> None:
        for key_id in key_ids:
            self._keys.pop(key_id, None)


_KEYS = _KeyCache(_SET_CAPACITY * len(KEY_TYPES))


def configure_key_cache(terminals: int) -> None:
    """Room for the keys of ``terminals`` terminals (``VIOPAY_TERMINAL_CACHE_SIZE``), two sets
    each (a rotation's grace). A set beyond it is read and unwrapped again on its next use."""
    global _SET_CAPACITY  # noqa: PLW0603 - the process's cache, sized once at start-up
    _SET_CAPACITY = 2 * terminals
    _KEYS.resize(_SET_CAPACITY * len(KEY_TYPES))
    _drop_oldest(_SETS, _SET_CAPACITY)


class StoredKey(Protocol):
    @property
    def key_id(self) -> str: ...
    @property
    def key_wrapped(self) -> bytes: ...


class SetState(Protocol):
    """What decides whether a set is usable: a KeySet row, or the columns of one."""

    @property
    def status(self) -> KeySetStatus: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def retires_at(self) -> datetime | None: ...


def unwrap_stored_key(wrapper: KeyWrapper, row: StoredKey) -> bytes:
    key = _KEYS.get(row.key_id)
    if key is None:
        key = wrapper.unwrap(row.key_wrapped, context=_wrap_context(row.key_id))
        _KEYS.put(row.key_id, key)
    return key


@dataclass(frozen=True, eq=False)
class SetKeys:
    """The six raw keys of one set, by type, with their ids and KCVs (no key in the repr)."""

    key_set_id: str
    keys: Mapping[str, bytes] = field(repr=False)
    key_ids: Mapping[str, str]
    kcvs: Mapping[str, str]

    def key(self, key_type: str) -> bytes:
        return self.keys[key_type]

    @property
    def msk(self) -> bytes:
        return self.keys["MSK"]

    @property
    def mac(self) -> bytes:
        return self.keys["MAC"]


#: Sets already loaded, by key_set_id, in this process: like ``_KEYS``, an entry never goes
#: stale (a set's keys never change once made), and it saves a query per charge.
_SETS: OrderedDict[str, SetKeys] = OrderedDict()


def cached_keys(key_set_id: str) -> SetKeys | None:
    """A set's keys if this process has them unwrapped already (see :func:`load_keys`)."""
    cached = _SETS.get(key_set_id)
    if cached is not None:
        _SETS.move_to_end(key_set_id)
    return cached


# Built once (issue 10): the activation and key routes run these on every request.
_SET_KEYS = select(KeySetKey).where(KeySetKey.key_set_id == bindparam("key_set_id"))
_BY_MSK = select(KeySet).where(KeySet.msk_key_id == bindparam("kid"))
_BY_HMAC = select(KeySet).where(KeySet.hmac_key_id == bindparam("kid"))
_UNRETIRED = (
    select(KeySet)
    .where(KeySet.device_id == bindparam("device_id"), KeySet.status != KeySetStatus.retired)
    .order_by(KeySet.created_at.desc(), KeySet.key_set_id.desc())
)
# Its parameter is "set_id", not a column's name: those are reserved for an UPDATE's SET.
_COUNT_ENVELOPES = (
    update(KeySet)
    .where(KeySet.key_set_id == bindparam("set_id"))
    .values(envelope_count=KeySet.envelope_count + bindparam("count"))
    .returning(KeySet.envelope_count)
)
_LOCK_SETS = (
    select(KeySet)
    .where(KeySet.device_id == bindparam("device_id"))
    .order_by(KeySet.key_set_id)
    .with_for_update()
    .execution_options(populate_existing=True)
)


async def load_keys(db: AsyncSession, *, wrapper: KeyWrapper, key_set_id: str) -> SetKeys:
    """Unwrap the keys of a set (cached per set and per key_id). Status is the caller's to
    check, on a fresh read of the set."""
    cached = cached_keys(key_set_id)
    if cached is not None:
        return cached
    rows = (await db.scalars(_SET_KEYS, {"key_set_id": key_set_id})).all()
    if len(rows) != len(KEY_TYPES):
        raise LookupError("key set has no keys")
    made = _set_keys(wrapper, key_set_id, rows)
    _keep(made)
    return made


def _keep(keys: SetKeys) -> None:
    _SETS[keys.key_set_id] = keys
    _drop_oldest(_SETS, _SET_CAPACITY)


def _set_keys(wrapper: KeyWrapper, key_set_id: str, rows: Sequence[KeySetKey]) -> SetKeys:
    return SetKeys(
        key_set_id=key_set_id,
        keys=MappingProxyType({row.type: unwrap_stored_key(wrapper, row) for row in rows}),
        key_ids=MappingProxyType({row.type: row.key_id for row in rows}),
        kcvs=MappingProxyType({row.type: row.kcv for row in rows}),
    )


# --- lookups and life -------------------------------------------------------------------------


def is_usable(key_set: SetState, *, now: datetime) -> bool:
    """Pending and not expired, active, or previous within its rotation grace."""
    if key_set.status is KeySetStatus.pending:
        return now < key_set.expires_at
    if key_set.status is KeySetStatus.active:
        return True
    if key_set.status is KeySetStatus.previous:
        return key_set.retires_at is not None and now < key_set.retires_at
    return False


def serves_charges(key_set: SetState, *, now: datetime) -> bool:
    """Active, or previous within the grace: the sets whose MAC key signs charges (§2.4)."""
    return key_set.status is not KeySetStatus.pending and is_usable(key_set, now=now)


async def key_set_by_msk_key_id(db: AsyncSession, kid: str) -> KeySet | None:
    """The set an envelope's ``kid`` names (any status: the caller decides what is usable)."""
    key_set: KeySet | None = await db.scalar(_BY_MSK, {"kid": kid})
    return key_set


async def key_set_by_hmac_key_id(db: AsyncSession, key_id: str) -> KeySet | None:
    """The set a charge's ``X-Key-Id`` names (any status)."""
    key_set: KeySet | None = await db.scalar(_BY_HMAC, {"kid": key_id})
    return key_set


async def usable_key_sets(db: AsyncSession, *, device: Device, now: datetime) -> list[KeySet]:
    """The device's usable sets, newest first (``[0]`` is the default of §3.8)."""
    rows = await db.scalars(_UNRETIRED, {"device_id": device.device_id})
    return [key_set for key_set in rows if is_usable(key_set, now=now)]


async def count_envelopes(db: AsyncSession, *, key_set_id: str, count: int = 1) -> int:
    """Add ``count`` envelopes to a set's MSK tally atomically; returns the new total."""
    total = await db.scalar(_COUNT_ENVELOPES, {"set_id": key_set_id, "count": count})
    if total is None:
        raise LookupError("no such key set")
    return int(total)


async def lock_device(db: AsyncSession, device_id: str) -> Device:
    """The device row, row-locked and re-read: the first lock of every transaction that goes
    on to write a key set of the device (one fixed order, device then sets, so two of them
    never deadlock)."""
    await db.flush()  # pending changes first, so re-reading the row cannot undo them
    device = await db.get(Device, device_id, with_for_update=True, populate_existing=True)
    if device is None:
        raise LookupError("no such device")
    return device


async def lock_device_sets(db: AsyncSession, device_id: str) -> tuple[Device, list[KeySet]]:
    """The device row, then every set of the device in key_set_id order, row-locked and
    re-read (one fixed lock order: device first, as every device update takes it)."""
    device = await lock_device(db, device_id)
    rows = await db.scalars(_LOCK_SETS, {"device_id": device_id})
    return device, list(rows)


def _retire(
    db: AsyncSession,
    key_set: KeySet,
    *,
    actor: Actor,
    merchant_id: str | None,
    now: datetime,
    reason: str,
) -> None:
    was = key_set.status.value
    key_set.status, key_set.retired_at = KeySetStatus.retired, now
    record_event(
        db,
        type="key_set.retired",
        actor=actor,
        subject_type="key_set",
        subject_id=key_set.key_set_id,
        merchant_id=merchant_id,
        now=now,
        data={"device_id": key_set.device_id, "was": was, "reason": reason},
    )


async def activate_key_set(
    db: AsyncSession,
    *,
    key_set: KeySet,
    now: datetime,
    grace: timedelta,
    actor: Actor | None = None,
    locked: tuple[Device, list[KeySet]] | None = None,
) -> KeySet:
    """Make ``key_set`` the device's active set (§3.10). ``locked``: what
    :func:`lock_device_sets` gave the caller in this transaction (else it is called here).

    The set active before becomes ``previous`` until ``now + grace`` (retired at once when the
    grace is zero); every other older set, and every previous set, retires at once. Newer
    pending sets stay pending. Activating the active set again changes nothing. An expired,
    superseded or retired set is 409 invalid_state. The device row is the caller's to update,
    and the changes are flushed with the caller's (one flush, one fan-out of the events).
    """
    actor = actor or Actor("device", key_set.device_id)
    device, sets = locked or await lock_device_sets(db, key_set.device_id)
    merchant_id = device.merchant_id
    target = next((s for s in sets if s.key_set_id == key_set.key_set_id), None)
    if target is None:
        raise LookupError("no such key set")
    if target.status is KeySetStatus.active:
        return target
    if target.status is not KeySetStatus.pending or not is_usable(target, now=now):
        state = "expired" if target.status is KeySetStatus.pending else "superseded"
        raise InvalidState(f"key set is {state}")
    for other in sets:
        if other is target:
            continue
        if other.status is KeySetStatus.active and grace > timedelta(0):
            other.status, other.retires_at = KeySetStatus.previous, now + grace
            record_event(
                db,
                type="key_set.superseded",
                actor=actor,
                subject_type="key_set",
                subject_id=other.key_set_id,
                merchant_id=merchant_id,
                now=now,
                data={"device_id": other.device_id, "retires_at": other.retires_at.isoformat()},
            )
        elif (
            other.status is KeySetStatus.active
            or other.status is KeySetStatus.previous
            or (other.status is KeySetStatus.pending and other.created_at <= target.created_at)
        ):
            _retire(db, other, actor=actor, merchant_id=merchant_id, now=now, reason="activation")
    target.status, target.activated_at = KeySetStatus.active, now
    record_event(
        db,
        type="key_set.activated",
        actor=actor,
        subject_type="key_set",
        subject_id=target.key_set_id,
        merchant_id=merchant_id,
        now=now,
        data={"device_id": target.device_id},
    )
    return target


async def retire_device_key_sets(
    db: AsyncSession,
    *,
    device_id: str,
    actor: Actor,
    merchant_id: str | None,
    now: datetime,
    reason: str,
) -> list[str]:
    """Retire every set of the device that is not retired yet; returns their ids."""
    retired = []
    _, sets = await lock_device_sets(db, device_id)
    for key_set in sets:
        if key_set.status is not KeySetStatus.retired:
            _retire(db, key_set, actor=actor, merchant_id=merchant_id, now=now, reason=reason)
            retired.append(key_set.key_set_id)
    await db.flush()
    return retired


async def release_device(
    db: AsyncSession, *, device: Device, actor: Actor, now: datetime
) -> Device:
    """§5 release: the device's key sets retire, then it goes back to ``inactive`` (tokens and
    terminal id retire; past charges stay)."""
    await retire_device_key_sets(
        db,
        device_id=device.device_id,
        actor=actor,
        merchant_id=device.merchant_id,
        now=now,
        reason="release",
    )
    return await unclaim_device(db, device=device, actor=actor, now=now)
