"""Devices: provisioning and identity keys, pairing codes, claims and the lifecycle."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.cache import Cache, Window
from viopay.crypto.wrapping import KeyWrapper
from viopay.db import insert_for
from viopay.devices.models import (
    Device,
    DeviceStatus,
    MerchantDeviceIdentityKey,
    PairingCode,
    Terminal,
)
from viopay.devices.schemas import MerchantRef, StatusOut
from viopay.errors import (
    InvalidRequest,
    InvalidState,
    NotFound,
    PairingCodeInvalid,
    RateLimited,
    ServiceUnavailable,
)
from viopay.ids import rfc3339
from viopay.merchants.models import Merchant
from viopay.pagination import Page, PageParams, make_page, paginate

PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 6
PAIRING_CODE_TTL = timedelta(seconds=300)
PAIRING_CODES_PER_HOUR = 10
STATUS_POLLS_PER_MINUTE = 30
POLL_INTERVAL = 5
# Failed claims: (scope, limit, window seconds). Past a limit every claim of that scope is 429.
CLAIM_LIMITS = (("user", 5, 900.0), ("merchant", 20, 900.0), ("global", 1000, 3600.0))
_IDENTITY_CONTEXT = "identity-key:{device_id}:{key_id}"


def identity_key_context(device_id: str, key_id: str) -> str:
    """The wrapping context (AAD) of an identity secret."""
    return _IDENTITY_CONTEXT.format(device_id=device_id, key_id=key_id)


@dataclass(frozen=True)
class NewIdentityKey:
    device_id: str
    key_id: str
    identity_secret: str  # shown once, 64 lower-case hex

    def __repr__(self) -> str:
        return f"NewIdentityKey(device_id={self.device_id!r}, key_id={self.key_id!r})"


# --- provisioning and identity keys ---------------------------------------------------------


def default_key_id(now: datetime) -> str:
    return f"device-id-key-{now:%Y-%m}-{secrets.token_hex(3)}"


async def provision_device(
    db: AsyncSession,
    *,
    wrapper: KeyWrapper,
    device_id: str,
    key_id: str | None,
    actor: Actor,
    now: datetime,
) -> NewIdentityKey:
    if await db.get(Device, device_id) is not None:
        raise InvalidState(f"device {device_id} is already provisioned")
    db.add(
        Device(device_id=device_id, status=DeviceStatus.inactive, disabled=False, created_at=now)
    )
    record_event(
        db,
        type="device.provisioned",
        actor=actor,
        subject_type="device",
        subject_id=device_id,
        merchant_id=None,
        now=now,
    )
    await db.flush()
    return await add_identity_key(
        db, wrapper=wrapper, device_id=device_id, key_id=key_id, actor=actor, now=now
    )


async def add_identity_key(
    db: AsyncSession,
    *,
    wrapper: KeyWrapper,
    device_id: str,
    key_id: str | None,
    actor: Actor,
    now: datetime,
) -> NewIdentityKey:
    device = await get_device(db, device_id)
    key_id = key_id or default_key_id(now)
    existing = await db.scalar(
        select(MerchantDeviceIdentityKey.id).where(
            MerchantDeviceIdentityKey.device_id == device_id,
            MerchantDeviceIdentityKey.key_id == key_id,
        )
    )
    if existing is not None:
        raise InvalidState(f"key {key_id} already exists for this device")
    secret = secrets.token_bytes(32)
    db.add(
        MerchantDeviceIdentityKey(
            device_id=device_id,
            key_id=key_id,
            secret_wrapped=wrapper.wrap(
                secret, context=_IDENTITY_CONTEXT.format(device_id=device_id, key_id=key_id)
            ),
            created_at=now,
            revoked_at=None,
        )
    )
    record_event(
        db,
        type="identity_key.added",
        actor=actor,
        subject_type="identity_key",
        subject_id=f"{device_id}/{key_id}",
        merchant_id=device.merchant_id,
        now=now,
    )
    await db.flush()
    return NewIdentityKey(device_id, key_id, secret.hex())


async def revoke_identity_key(
    db: AsyncSession, *, device_id: str, key_id: str, actor: Actor, now: datetime
) -> MerchantDeviceIdentityKey:
    device = await get_device(db, device_id)
    key = await db.scalar(
        select(MerchantDeviceIdentityKey).where(
            MerchantDeviceIdentityKey.device_id == device_id,
            MerchantDeviceIdentityKey.key_id == key_id,
        )
    )
    if key is None:
        raise NotFound("no such identity key")
    if key.revoked_at is None:
        key.revoked_at = now
        record_event(
            db,
            type="identity_key.revoked",
            actor=actor,
            subject_type="identity_key",
            subject_id=f"{device_id}/{key_id}",
            merchant_id=device.merchant_id,
            now=now,
        )
        await db.flush()
    return key


def unwrap_identity_secret(wrapper: KeyWrapper, key: MerchantDeviceIdentityKey) -> bytes:
    return wrapper.unwrap(
        key.secret_wrapped,
        context=_IDENTITY_CONTEXT.format(device_id=key.device_id, key_id=key.key_id),
    )


async def get_device(db: AsyncSession, device_id: str) -> Device:
    device = await db.get(Device, device_id)
    if device is None:
        raise NotFound("no such device")
    return device


async def merchant_device(db: AsyncSession, *, merchant_id: str, device_id: str) -> Device:
    """A device of this merchant; any other (or none) is 404 alike."""
    device = await db.get(Device, device_id)
    if device is None or device.merchant_id != merchant_id:
        raise NotFound("no such device in this merchant")
    return device


async def merchant_devices(
    db: AsyncSession, *, merchant_id: str, page: PageParams, online: str | None = None
) -> Page[Device]:
    """The merchant's devices, newest claim first (§6); ``online`` "true" or "false" (§8)."""
    query = select(Device).where(Device.merchant_id == merchant_id)
    if online is not None:
        query = query.where(Device.online.is_(online == "true"))
    query = paginate(
        query,
        at=Device.claimed_at,
        ident=Device.device_id,
        params=page,
    )
    return make_page(
        (await db.scalars(query)).all(), params=page, at="claimed_at", ident="device_id"
    )


# --- pairing codes --------------------------------------------------------------------------


def new_pairing_code() -> str:
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def normalise_code(raw: str) -> str:
    """Portal input is case-insensitive and ignores spaces and hyphens (PROTOCOL §3.2)."""
    return re.sub(r"[\s-]+", "", raw).upper()


def code_digest(wrapper: KeyWrapper, code: str) -> str:
    return hmac.new(wrapper.derive("pairing-code"), code.encode(), hashlib.sha256).hexdigest()


# Built once (issue 10): the holder of a new code's value, if any.
_CODE_HOLDER = select(PairingCode).where(PairingCode.code_digest == bindparam("digest"))


async def issue_pairing_code(
    db: AsyncSession, cache: Cache, *, wrapper: KeyWrapper, device: Device, now: datetime
) -> tuple[str, datetime]:
    check_pairable(device.status)
    async with pairing_reservation(cache, device_id=device.device_id, now=now):
        return await _write_pairing_code(db, wrapper=wrapper, device=device, now=now)


def check_pairable(status: DeviceStatus) -> None:
    """Pairing codes are for inactive devices (409 otherwise)."""
    if status is not DeviceStatus.inactive:
        raise InvalidState(f"device is {status.value}; pairing codes are for inactive devices")


@contextlib.asynccontextmanager
async def pairing_reservation(
    cache: Cache, *, device_id: str, now: datetime
) -> AsyncIterator[None]:
    """One of the device's ten codes an hour (429 past them), given back when the block fails:
    no code was issued (a database error, a cancelled request). (A commit that fails after the
    block ends still uses one.)"""
    reservation = await cache.window_reserve(
        [Window(f"rl:pairing:{device_id}", PAIRING_CODES_PER_HOUR, 3600)],
        now=now.timestamp(),
    )
    if reservation.wait:
        raise RateLimited(
            "at most 10 pairing codes per device per hour",
            retry_after=int(reservation.wait) + 1,
        )
    try:
        yield
    except BaseException:
        with contextlib.suppress(ServiceUnavailable):
            await cache.window_release(reservation)
        raise


def pairing_code_event(device_id: str, expires_at: datetime) -> dict[str, Any]:
    """The audit event of an issued code: its type, actor, subject and data."""
    return {
        "type": "device.pairing_code_issued",
        "actor": Actor("device", device_id),
        "subject_type": "device",
        "subject_id": device_id,
        "merchant_id": None,
        "data": {"expires_at": expires_at.isoformat()},
    }


async def _write_pairing_code(
    db: AsyncSession, *, wrapper: KeyWrapper, device: Device, now: datetime
) -> tuple[str, datetime]:
    expires_at = now + PAIRING_CODE_TTL
    while True:
        code = new_pairing_code()
        digest = code_digest(wrapper, code)
        holder = await db.scalar(_CODE_HOLDER, {"digest": digest})
        if holder is None:
            break
        if holder.expires_at <= now or holder.used_at is not None:
            holder.code_digest = None  # a dead code of another device: free its value
            await db.flush()
            break
    # One upsert on the device's row: a new code kills the previous one, and two requests of a
    # device that has no row yet never both insert one (a unique violation, 500 under a burst).
    values = {"code_digest": digest, "issued_at": now, "expires_at": expires_at, "used_at": None}
    await db.execute(
        insert_for(db.get_bind().dialect.name)(PairingCode)
        .values(device_id=device.device_id, **values)
        .on_conflict_do_update(index_elements=["device_id"], set_=values)
    )
    record_event(db, now=now, **pairing_code_event(device.device_id, expires_at))
    await db.flush()
    return code, expires_at


async def live_code_expiry(db: AsyncSession, *, device: Device, now: datetime) -> datetime | None:
    """When the pairing code of an inactive ``device`` expires; None without a live one.

    A code found spent was spent by a claim, which may have committed after ``device`` was read
    (each statement reads what is committed when it runs): the device's state is read again
    then, so a status poll never answers "inactive, no code" for a device being claimed (the
    SDK takes that for an expired code)."""
    if device.status is not DeviceStatus.inactive:
        return None
    row = await db.get(PairingCode, device.device_id)
    if row is not None and row.used_at is not None:
        await db.refresh(device, ["status", "merchant_id", "terminal_id", "label"])
        return None
    return code_expiry(row, now=now)


def code_expiry(code: PairingCode | None, *, now: datetime) -> datetime | None:
    """When ``code``, an inactive device's pairing code, expires; None when it is not live."""
    if code is None or code.code_digest is None or code.used_at is not None:
        return None
    return code.expires_at if code.expires_at > now else None


async def check_status_rate(cache: Cache, *, device_id: str, now: datetime) -> None:
    wait = await cache.window_hit(
        f"rl:status:{device_id}",
        limit=STATUS_POLLS_PER_MINUTE,
        window=60,
        now=now.timestamp(),
    )
    if wait:
        raise RateLimited("at most 30 status calls per minute", retry_after=int(wait) + 1)


def status_answer(
    *,
    device_id: str,
    status: DeviceStatus,
    terminal_id: str | None,
    merchant: tuple[str, str] | None,
    code_expires_at: datetime | None,
) -> bytes:
    """The §3.3 answer, as JSON: ``merchant`` is (id, name) once claimed."""
    return (
        StatusOut(
            device_id=device_id,
            status=status.value,
            pairing_code_expires_at=rfc3339(code_expires_at) if code_expires_at else None,
            merchant=MerchantRef(id=merchant[0], name=merchant[1]) if merchant else None,
            terminal_id=terminal_id,
            poll_interval=POLL_INTERVAL,
        )
        .model_dump_json()
        .encode()
    )


# --- claims ---------------------------------------------------------------------------------


def _claim_windows(subject: str, merchant_id: str) -> list[Window]:
    names = {
        "user": f"rl:claimfail:user:{subject}",
        "merchant": f"rl:claimfail:merchant:{merchant_id}",
        "global": "rl:claimfail:global",
    }
    return [Window(names[scope], limit, window) for scope, limit, window in CLAIM_LIMITS]


def is_pairing_code(code: str) -> bool:
    """Six characters of the alphabet (after :func:`normalise_code`): a code that could exist."""
    return len(code) == PAIRING_CODE_LENGTH and set(code) <= set(PAIRING_ALPHABET)


# Built once (issue 10).
_SPEND_CODE = (
    update(PairingCode)
    .where(
        PairingCode.code_digest == bindparam("digest"),
        PairingCode.expires_at > bindparam("at"),
        PairingCode.used_at.is_(None),
    )
    .values(code_digest=None, used_at=bindparam("at"))
    .returning(PairingCode.device_id)
)


async def _spend_code(db: AsyncSession, *, wrapper: KeyWrapper, code: str, now: datetime) -> Device:
    """The device of a live code, locked; the code is spent. PairingCodeInvalid otherwise."""
    # Spend the code atomically: of two concurrent claims exactly one gets the row.
    device_id = await db.scalar(_SPEND_CODE, {"digest": code_digest(wrapper, code), "at": now})
    device = await db.get(Device, device_id, with_for_update=True) if device_id else None
    if device is None or device.status is not DeviceStatus.inactive or device.disabled:
        raise PairingCodeInvalid()
    return device


async def claim_device(
    db: AsyncSession,
    cache: Cache,
    *,
    wrapper: KeyWrapper,
    raw_code: object,
    label: str | None,
    merchant_id: str,
    actor: Actor,
    now: datetime,
) -> Device:
    """§3.4. A code that cannot be a code is 400 and counts nothing; every other claim is
    counted as failed before it runs (check and count in one atomic step, so a burst cannot
    slip past the limits) and taken back when it succeeds."""
    if not isinstance(raw_code, str) or not normalise_code(raw_code):
        raise InvalidRequest(
            "pairing_code is required", errors=[{"field": "pairing_code", "message": "required"}]
        )
    code = normalise_code(raw_code)
    if not is_pairing_code(code):
        raise InvalidRequest(
            "pairing_code is not a pairing code",
            errors=[
                {
                    "field": "pairing_code",
                    "message": f"must be {PAIRING_CODE_LENGTH} characters of {PAIRING_ALPHABET}",
                }
            ],
        )
    reservation = await cache.window_reserve(
        _claim_windows(actor.id or "", merchant_id), now=now.timestamp()
    )
    if reservation.wait:
        raise RateLimited(
            "too many failed claims; try again later", retry_after=int(reservation.wait) + 1
        )
    try:
        device = await _spend_code(db, wrapper=wrapper, code=code, now=now)
    except PairingCodeInvalid:
        raise  # a failed claim: it stays counted
    except BaseException:
        await cache.window_release(reservation)
        raise
    await cache.window_release(reservation)
    merchant = await db.get(Merchant, merchant_id)
    assert merchant is not None
    terminal_id = await _new_terminal(db, device=device, merchant=merchant, now=now)
    device.status, device.merchant_id, device.terminal_id = (
        DeviceStatus.claimed,
        merchant_id,
        terminal_id,
    )
    device.label, device.claimed_at = label, now
    record_event(
        db,
        type="device.claimed",
        actor=actor,
        subject_type="device",
        subject_id=device.device_id,
        merchant_id=merchant_id,
        now=now,
        data={"terminal_id": terminal_id, "label": label},
    )
    await db.flush()
    return device


async def _new_terminal(
    db: AsyncSession, *, device: Device, merchant: Merchant, now: datetime
) -> str:
    """A terminal with a random free ``TID-nnnnnn``: one INSERT … ON CONFLICT DO NOTHING per
    draw (an id another claim took, even concurrently, is drawn again, never a 500; only the
    id's own conflict is skipped, so the loop cannot spin on another one)."""
    statement = (
        insert_for(db.get_bind().dialect.name)(Terminal)
        .on_conflict_do_nothing(index_elements=["terminal_id"])  # any other conflict raises
        .returning(Terminal.terminal_id)
    )
    values = {
        "device_id": device.device_id,
        "merchant_id": merchant.merchant_id,
        "currency": merchant.currency,
        "created_at": now,
        "retired_at": None,
    }
    while True:
        terminal_id = f"TID-{secrets.randbelow(10**6):06d}"
        if await db.scalar(statement, {"terminal_id": terminal_id, **values}) is not None:
            return terminal_id


# --- lifecycle ------------------------------------------------------------------------------


async def set_disabled(
    db: AsyncSession, *, device: Device, disabled: bool, actor: Actor, now: datetime
) -> Device:
    if device.disabled == disabled:
        return device
    device.disabled = disabled
    if disabled:
        device.token_generation += (
            1  # kills attestation tokens at once; enabling does not revive them
        )
        await _kill_pairing_code(db, device.device_id)
    record_event(
        db,
        type="device.disabled" if disabled else "device.enabled",
        actor=actor,
        subject_type="device",
        subject_id=device.device_id,
        merchant_id=device.merchant_id,
        now=now,
    )
    await db.flush()
    return device


def clean_label(label: str | None) -> str | None:
    """A label as stored: surrounding spaces trimmed; empty means none."""
    if label is None:
        return None
    return label.strip() or None


async def set_label(
    db: AsyncSession, *, device: Device, label: str | None, actor: Actor, now: datetime
) -> Device:
    """Rename a device (the label the merchant knows it by); ``None`` or blank clears it."""
    label = clean_label(label)
    if device.label == label:
        return device
    previous, device.label = device.label, label
    record_event(
        db,
        type="device.renamed",
        actor=actor,
        subject_type="device",
        subject_id=device.device_id,
        merchant_id=device.merchant_id,
        now=now,
        data={"label": label, "previous_label": previous},
    )
    await db.flush()
    return device


async def unclaim_device(
    db: AsyncSession, *, device: Device, actor: Actor, now: datetime
) -> Device:
    """Back to ``inactive``: tokens and the terminal id retire; past charges stay. Its key
    sets are the key sets' to retire: :func:`viopay.keysets.service.release_device` does
    both, and is what a release calls."""
    merchant_id = device.merchant_id
    if device.terminal_id is not None:
        terminal = await db.get(Terminal, device.terminal_id)
        if terminal is not None:
            terminal.retired_at = now
    device.status, device.merchant_id, device.terminal_id = DeviceStatus.inactive, None, None
    device.label, device.claimed_at, device.activated_at = None, None, None
    device.token_generation += 1
    await _kill_pairing_code(db, device.device_id)
    record_event(
        db,
        type="device.released",
        actor=actor,
        subject_type="device",
        subject_id=device.device_id,
        merchant_id=merchant_id,
        now=now,
    )
    await db.flush()
    return device


async def _kill_pairing_code(db: AsyncSession, device_id: str) -> None:
    await db.execute(
        update(PairingCode).where(PairingCode.device_id == device_id).values(code_digest=None)
    )


async def list_devices(db: AsyncSession, *, merchant_id: str | None = None) -> list[Device]:
    """Every device (of one merchant when given), newest claim first (``viopay device list``)."""
    query = select(Device).order_by(Device.claimed_at.desc(), Device.device_id)
    if merchant_id is not None:
        query = query.where(Device.merchant_id == merchant_id)
    return list((await db.scalars(query)).all())
