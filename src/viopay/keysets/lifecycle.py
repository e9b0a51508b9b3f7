"""The operator's view of a device's keys (issue 12): identity keys and key sets with their
check values, states and ages — never a key — a forced key-set rotation, and what revoking an
identity key kills.

A forced rotation marks the terminal's active set (``rotate_requested_at``): the next §4 answer
sealed for that set carries ``"rotate_keys": true`` (``payments.channel.key_set_usage``), the
terminal rotates (attest, keys, activate) and the marked set becomes ``previous`` for the
rotation grace, then retires — the rotation of §3.10, started by the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.crypto.wrapping import KeyWrapper
from viopay.devices.models import MerchantDeviceIdentityKey, Terminal
from viopay.devices.service import get_device, revoke_identity_key, unwrap_identity_secret
from viopay.errors import InvalidState, NotFound
from viopay.keysets.models import KeySet, KeySetKey, KeySetStatus
from viopay.keysets.service import _retire, is_usable, lock_device_sets
from viopay_device.protocol.kcv import hmac_kcv
from viopay_device.protocol.keyblocks import KEY_TYPES


def _age(since: datetime, now: datetime) -> int:
    return max(0, int((now - since).total_seconds()))


@dataclass(frozen=True)
class IdentityKeyView:
    key_id: str
    kcv: str
    state: str  # live | revoked
    created_at: datetime
    revoked_at: datetime | None
    age_seconds: int


async def list_identity_keys(
    db: AsyncSession, *, wrapper: KeyWrapper, device_id: str, now: datetime
) -> list[IdentityKeyView]:
    """The device's identity keys, oldest first. The KCV (HMAC-SHA256 over 16 zero bytes, first
    3 bytes) is computed on a secret unwrapped for that purpose and dropped at once."""
    await get_device(db, device_id)
    rows = (
        await db.scalars(
            select(MerchantDeviceIdentityKey)
            .where(MerchantDeviceIdentityKey.device_id == device_id)
            .order_by(MerchantDeviceIdentityKey.created_at, MerchantDeviceIdentityKey.id)
        )
    ).all()
    return [
        IdentityKeyView(
            key_id=row.key_id,
            kcv=hmac_kcv(unwrap_identity_secret(wrapper, row)),
            state="revoked" if row.revoked_at is not None else "live",
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            age_seconds=_age(row.created_at, now),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class KeySetView:
    key_set: KeySet
    state: str  # the stored status, with "expired" for a pending set past its time
    kcvs: dict[str, str]
    key_ids: dict[str, str]
    age_seconds: int


def _state(key_set: KeySet, now: datetime) -> str:
    if key_set.status is KeySetStatus.pending and not is_usable(key_set, now=now):
        return "expired"
    if key_set.status is KeySetStatus.previous and not is_usable(key_set, now=now):
        return "retired"
    return key_set.status.value


async def _terminal(db: AsyncSession, terminal_id: str) -> Terminal:
    terminal = await db.get(Terminal, terminal_id)
    if terminal is None:
        raise NotFound("no such terminal")
    return terminal


async def list_key_sets(db: AsyncSession, *, terminal_id: str, now: datetime) -> list[KeySetView]:
    """The terminal's key sets, newest first, with the KCVs recorded when each was made."""
    await _terminal(db, terminal_id)
    sets = (
        await db.scalars(
            select(KeySet)
            .where(KeySet.terminal_id == terminal_id)
            .order_by(KeySet.created_at.desc(), KeySet.key_set_id)
        )
    ).all()
    keys = (
        await db.scalars(
            select(KeySetKey).where(KeySetKey.key_set_id.in_([s.key_set_id for s in sets]))
        )
    ).all()
    kcvs: dict[str, dict[str, str]] = {}
    ids: dict[str, dict[str, str]] = {}
    for key in keys:
        kcvs.setdefault(key.key_set_id, {})[key.type] = key.kcv
        ids.setdefault(key.key_set_id, {})[key.type] = key.key_id
    order = {t: i for i, t in enumerate(KEY_TYPES)}
    return [
        KeySetView(
            key_set=s,
            state=_state(s, now),
            kcvs=dict(sorted(kcvs.get(s.key_set_id, {}).items(), key=lambda kv: order[kv[0]])),
            key_ids=dict(sorted(ids.get(s.key_set_id, {}).items(), key=lambda kv: order[kv[0]])),
            age_seconds=_age(s.created_at, now),
        )
        for s in sets
    ]


async def force_rotation(
    db: AsyncSession, *, terminal_id: str, actor: Actor, now: datetime
) -> KeySet:
    """Mark the terminal's active set for rotation (409 invalid_state when it has none)."""
    terminal = await _terminal(db, terminal_id)
    if terminal.retired_at is not None:
        raise InvalidState("the terminal is retired")
    _, sets = await lock_device_sets(db, terminal.device_id)
    active = next(
        (s for s in sets if s.terminal_id == terminal_id and s.status is KeySetStatus.active),
        None,
    )
    if active is None:
        raise InvalidState("the terminal has no active key set to rotate")
    if active.rotate_requested_at is None:
        active.rotate_requested_at = now
        record_event(
            db,
            type="key_set.rotation_requested",
            actor=actor,
            subject_type="key_set",
            subject_id=active.key_set_id,
            merchant_id=terminal.merchant_id,
            now=now,
            data={"device_id": active.device_id, "terminal_id": terminal_id},
        )
        await db.flush()
    return active


@dataclass(frozen=True)
class Revocation:
    """What revoking an identity key killed, and what it left standing."""

    key: MerchantDeviceIdentityKey
    #: Attestation tokens earned with the key: refused from now on (checked on every use).
    tokens_refused: bool
    #: Pending key sets the key earned: retired (no token can activate them any more).
    pending_key_sets_retired: list[str]
    #: Active or previous sets the key earned: they keep serving charges until rotated.
    key_sets_still_serving: list[str]
    #: The device's identity keys still live (none: the device cannot attest again).
    live_identity_keys: list[str]


async def revoke_and_report(
    db: AsyncSession, *, device_id: str, key_id: str, actor: Actor, now: datetime
) -> Revocation:
    key = await revoke_identity_key(db, device_id=device_id, key_id=key_id, actor=actor, now=now)
    device, sets = await lock_device_sets(db, device_id)
    retired: list[str] = []
    serving: list[str] = []
    for key_set in sets:
        if key_set.identity_key_id != key_id:
            continue
        if key_set.status is KeySetStatus.pending:
            _retire(
                db,
                key_set,
                actor=actor,
                merchant_id=device.merchant_id,
                now=now,
                reason="identity_key_revoked",
            )
            retired.append(key_set.key_set_id)
        elif key_set.status is not KeySetStatus.retired and is_usable(key_set, now=now):
            serving.append(key_set.key_set_id)
    live = (
        await db.scalars(
            select(MerchantDeviceIdentityKey.key_id).where(
                MerchantDeviceIdentityKey.device_id == device_id,
                MerchantDeviceIdentityKey.revoked_at.is_(None),
            )
        )
    ).all()
    await db.flush()
    return Revocation(key, True, retired, serving, sorted(live))
