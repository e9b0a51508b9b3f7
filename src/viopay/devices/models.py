from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class DeviceStatus(enum.StrEnum):
    inactive = "inactive"
    claimed = "claimed"
    activated = "activated"


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_online_heartbeat", "online", "last_heartbeat_at"),)

    device_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    status: Mapped[DeviceStatus] = mapped_column(
        Enum(DeviceStatus, native_enum=False, length=16), default=DeviceStatus.inactive
    )
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.merchant_id"), index=True)
    terminal_id: Mapped[str | None] = mapped_column(String(16), unique=True)
    label: Mapped[str | None] = mapped_column(String(200))
    app_version: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    activated_at: Mapped[datetime | None]
    # Bumped on disable and release: attestation tokens carry it, so old tokens die at once.
    token_generation: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    # Health from the terminal's heartbeats (PROTOCOL §8). ``online`` is the state last
    # announced by a device.online / device.offline event.
    online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_heartbeat_at: Mapped[datetime | None]
    battery_pct: Mapped[int | None]
    charging: Mapped[bool | None]
    network: Mapped[str | None] = mapped_column(String(16))
    signal_dbm: Mapped[int | None]
    printer: Mapped[str | None] = mapped_column(String(16))
    pending_offline: Mapped[int | None]
    uptime_s: Mapped[int | None]


class MerchantDeviceIdentityKey(Base):
    """A device's identity secret, stored only wrapped under the master key."""

    __tablename__ = "merchant_device_identity_keys"
    __table_args__ = (UniqueConstraint("device_id", "key_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    key_id: Mapped[str] = mapped_column(String(128))
    secret_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class PairingCode(Base):
    """The device's one pairing code; the code itself is kept only as a keyed digest."""

    __tablename__ = "pairing_codes"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    code_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Terminal(Base):
    """The logical payment terminal a claimed device becomes."""

    __tablename__ = "terminals"

    terminal_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]
