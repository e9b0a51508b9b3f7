"""Master keys (never their value: an id, a check value, where the key lives) and derived keys
(random, stored wrapped under the active master key like every other key)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class MasterKeyState(enum.StrEnum):
    """``active``: new blobs are sealed under it; ``retiring``: a rotation away from it is under
    way (blobs it sealed still open); ``destroyed``: no blob names it any more and the key (file
    or HSM object) is gone."""

    active = "active"
    retiring = "retiring"
    destroyed = "destroyed"


class MasterKeyRecord(Base):
    __tablename__ = "master_keys"

    # "f" + 16 hex for a key file or VIOPAY_MASTER_KEY, "h" + hex(CKA_ID) for an HSM key.
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # file | hsm
    kcv: Mapped[str] = mapped_column(String(6))
    # A key file's path, the HSM key's label, or "VIOPAY_MASTER_KEY" (held by configuration only).
    location: Mapped[str] = mapped_column(String(1024))
    state: Mapped[MasterKeyState] = mapped_column(
        Enum(MasterKeyState, native_enum=False, length=16)
    )
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]
    retiring_at: Mapped[datetime | None]
    destroyed_at: Mapped[datetime | None]


class DerivedKey(Base):
    """A 32-byte key for one purpose (``KeyWrapper.derive``), shared by every server process."""

    __tablename__ = "derived_keys"

    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
