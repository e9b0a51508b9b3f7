"""Heartbeats and the online/offline line (PROTOCOL §8).

A terminal is online while its last heartbeat is under 3 × ``next_heartbeat_s`` old. The
first heartbeat after being offline (or the very first) makes ``device.online`` at once; the
fleet timer (:mod:`viopay.fleet.timer`) makes ``device.offline`` within a check period of the
line being crossed. Both are events (actor ``system``), so they reach the merchant's webhooks
through the outbox in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import SYSTEM, record_event
from viopay.devices.models import Device
from viopay.fleet.models import TimerLease
from viopay.fleet.schemas import HeartbeatIn
from viopay.ids import rfc3339
from viopay.merchants.config import get_config
from viopay.merchants.service import get_merchant
from viopay.parameters.service import parameters_for

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
    "next_heartbeat_s"}``."""
    device = await db.get(Device, device_id, with_for_update=True)
    assert device is not None
    for name, value in report.given().items():
        setattr(device, name, value)
    device.last_heartbeat_at = now
    if not device.online:
        device.online = True
        _device_event(db, device_id, device.merchant_id, "online", now)
    await db.flush()
    merchant = await get_merchant(db, merchant_id)
    config = await get_config(db, merchant=merchant, now=now)
    parameters = await parameters_for(db, terminal_id)
    return {
        "server_time": rfc3339(now),
        "config_version": config.config_version,
        "parameters_sha256": parameters.sha256,
        "next_heartbeat_s": interval_seconds,
    }


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
