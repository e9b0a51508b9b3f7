"""Heartbeats and the online/offline line (PROTOCOL §8).

A terminal is online while its last heartbeat is under 3 × ``next_heartbeat_s`` old. The
first heartbeat after being offline (or the very first) makes ``device.online`` at once; the
fleet timer (:mod:`viopay.fleet.timer`) makes ``device.offline`` within a check period of the
line being crossed. Both are events (actor ``system``), so they reach the merchant's webhooks
through the outbox in the same transaction.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ScalarSelect, Update, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import SYSTEM, record_event
from viopay.devices.models import Device
from viopay.fleet.models import TimerLease
from viopay.fleet.schemas import HeartbeatIn
from viopay.ids import rfc3339
from viopay.merchants.config import get_config
from viopay.merchants.models import MerchantConfig
from viopay.merchants.service import get_merchant
from viopay.parameters.models import DEFAULT_KEY, TerminalParameters
from viopay.parameters.service import builtin_blob

OFFLINE_AFTER_BEATS = 3


def offline_after(interval_seconds: int) -> timedelta:
    return timedelta(seconds=OFFLINE_AFTER_BEATS * interval_seconds)


def _device_event(
    db: AsyncSession, device_id: str, merchant_id: str | None, what: str, now: datetime
) -> None:
    record_event(
        db,
        type=f"device.{what}",
        actor=SYSTEM,
        subject_type="device",
        subject_id=device_id,
        merchant_id=merchant_id,
        now=now,
    )


async def record_heartbeat(
    db: AsyncSession,
    *,
    device_id: str,
    terminal_id: str,
    merchant_id: str,
    report: HeartbeatIn,
    interval_seconds: int,
    now: datetime,
) -> dict[str, Any]:
    """Store the report and answer ``{"server_time","config_version","parameters_sha256",
    "next_heartbeat_s"}``.

    Every terminal beats every minute, so a fleet sends far more of these than charges: a
    terminal already online takes two statements (the report written only while the row still
    reads online, then the config version and parameters digest read together). Coming online,
    or a merchant whose config row is not made yet, takes the longer way."""
    given = report.given()
    beat = _beat_statement(tuple(sorted(given)))
    written = await db.execute(
        beat, {"b_device_id": device_id, "b_now": now, **{f"b_{k}": v for k, v in given.items()}}
    )
    if not getattr(written, "rowcount", 0):
        await _come_online(db, device_id=device_id, given=given, now=now)
    config_version, own, default = await _what_to_hold(
        db, merchant_id=merchant_id, terminal_id=terminal_id, now=now
    )
    return await heartbeat_answer(
        config_version=config_version,
        own_sha256=own,
        default_sha256=default,
        interval_seconds=interval_seconds,
        now=now,
    )


async def heartbeat_answer(
    *,
    config_version: int,
    own_sha256: str | None,
    default_sha256: str | None,
    interval_seconds: int,
    now: datetime,
) -> dict[str, Any]:
    """The §8 answer: the parameters digest is the terminal's own document's, else the
    operator default's, else the built-in document's."""
    digest = own_sha256 or default_sha256 or (await builtin_blob()).sha256
    return {
        "server_time": rfc3339(now),
        "config_version": config_version,
        "parameters_sha256": digest,
        "next_heartbeat_s": interval_seconds,
    }


@functools.lru_cache(maxsize=128)  # one per set of members sent: 2^7 at most, a handful seen
def _beat_statement(names: tuple[str, ...]) -> Update:
    """The report's members and ``last_heartbeat_at``, written only to a device online."""
    columns = Device.__table__.c
    values = {name: bindparam(f"b_{name}", type_=columns[name].type) for name in names}
    values["last_heartbeat_at"] = bindparam("b_now", type_=columns["last_heartbeat_at"].type)
    return (
        update(Device)
        .where(Device.device_id == bindparam("b_device_id"), Device.online.is_(True))
        .values(values)
    )


async def _come_online(
    db: AsyncSession, *, device_id: str, given: dict[str, object], now: datetime
) -> None:
    """The report on the locked row, and ``device.online`` (the first heartbeat, or the first
    after the fleet timer marked the terminal offline)."""
    device = await db.get(Device, device_id, with_for_update=True, populate_existing=True)
    assert device is not None
    for name, value in given.items():
        setattr(device, name, value)
    device.last_heartbeat_at = now
    if not device.online:  # another heartbeat may have brought it online meanwhile
        device.online = True
        _device_event(db, device_id, device.merchant_id, "online", now)
    await db.flush()


def _digest_of(key: str) -> ScalarSelect[str]:
    return (
        select(TerminalParameters.sha256)
        .where(TerminalParameters.terminal_id == bindparam(key))
        .scalar_subquery()
    )


# The merchant's config version and the digests of the terminal's own parameters and of the
# operator's default (never their ~100 KiB streams); no row when the config is not made.
_TO_HOLD = select(
    MerchantConfig.config_version, _digest_of("terminal_id"), _digest_of("default_key")
).where(MerchantConfig.merchant_id == bindparam("merchant_id"))


async def _what_to_hold(
    db: AsyncSession, *, merchant_id: str, terminal_id: str, now: datetime
) -> tuple[int, str | None, str | None]:
    """The config version, and the digests of the terminal's own parameters and of the
    operator's default (None: no such document)."""
    params = {"merchant_id": merchant_id, "terminal_id": terminal_id, "default_key": DEFAULT_KEY}
    row = (await db.execute(_TO_HOLD, params)).first()
    if row is None:  # the config is made with the defaults on its first read
        await get_config(db, merchant=await get_merchant(db, merchant_id), now=now)
        row = (await db.execute(_TO_HOLD, params)).one()
    version, own, default = row
    return version, own, default


async def mark_offline(db: AsyncSession, *, interval_seconds: int, now: datetime) -> list[str]:
    """Every terminal announced online whose last heartbeat is too old: offline, with its event."""
    cutoff = now - offline_after(interval_seconds)
    rows = (
        await db.execute(
            update(Device)
            .where(Device.online.is_(True), Device.last_heartbeat_at < cutoff)
            .values(online=False)
            .returning(Device.device_id, Device.merchant_id)
        )
    ).all()
    for device_id, merchant_id in rows:
        _device_event(db, device_id, merchant_id, "offline", now)
    await db.flush()
    return [r[0] for r in rows]


async def take_lease(
    db: AsyncSession, *, name: str, owner: str, ttl: timedelta, now: datetime
) -> bool:
    """True when ``owner`` holds the lease ``name`` until ``now + ttl`` (a conditional UPDATE:
    one holder at a time; the row is made by the migration)."""
    result = await db.execute(
        update(TimerLease)
        .where(
            TimerLease.name == name,
            or_(TimerLease.until.is_(None), TimerLease.until < now, TimerLease.owner == owner),
        )
        .values(owner=owner, until=now + ttl)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def lease_holder(db: AsyncSession, name: str) -> str | None:
    return await db.scalar(select(TimerLease.owner).where(TimerLease.name == name))
