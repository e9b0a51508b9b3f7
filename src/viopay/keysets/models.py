"""Key sets (PROTOCOL §3.6, §3.10): six keys per set, stored only wrapped under the master key."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class KeySetStatus(enum.StrEnum):
    """``pending`` until activated (expires 15 min after creation), ``active`` while it is the
    device's set, ``previous`` for the rotation grace after a newer set was activated (until
    ``retires_at``), then ``retired``. Expiry of a pending set and the end of the grace are
    read from the times, so no timer has to run for them."""

    pending = "pending"
    active = "active"
    previous = "previous"
    retired = "retired"


class KeySet(Base):
    __tablename__ = "key_sets"
    __table_args__ = (Index("ix_key_sets_device_created", "device_id", "created_at"),)

    key_set_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"), index=True)
    # The identity key whose token earned the set (its secret went into the KTK).
    identity_key_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[KeySetStatus] = mapped_column(
        Enum(KeySetStatus, native_enum=False, length=16), default=KeySetStatus.pending
    )
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]  # a pending set not activated by then is dead
    activated_at: Mapped[datetime | None]
    retires_at: Mapped[datetime | None]  # end of the rotation grace of a ``previous`` set
    retired_at: Mapped[datetime | None]
    # An operator asked for a rotation (issue 12): answers for this set carry rotate_keys.
    rotate_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # Envelopes sealed or opened under the MSK, both directions (§3.10 limit).
    envelope_count: Mapped[int] = mapped_column(default=0)
    hmac_key_id: Mapped[str] = mapped_column(String(128), unique=True)
    msk_key_id: Mapped[str] = mapped_column(String(128), unique=True)

    def __repr__(self) -> str:
        return (
            f"KeySet(key_set_id={self.key_set_id!r}, device_id={self.device_id!r}, "
            f"status={self.status.value!r})"
        )


class KeySetKey(Base):
    """One key of a set; ``key_wrapped`` = KeyWrapper.wrap(raw, context=f"key:{key_id}")."""

    __tablename__ = "key_set_keys"
    __table_args__ = (UniqueConstraint("key_set_id", "type"),)

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_set_id: Mapped[str] = mapped_column(ForeignKey("key_sets.key_set_id"))
    type: Mapped[str] = mapped_column(String(8))
    kcv: Mapped[str] = mapped_column(String(6))
    key_wrapped: Mapped[bytes] = mapped_column(LargeBinary)

    def __repr__(self) -> str:
        return (
            f"KeySetKey(key_id={self.key_id!r}, key_set_id={self.key_set_id!r}, type={self.type!r})"
        )
