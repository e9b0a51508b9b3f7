from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class Role(enum.StrEnum):
    owner = "owner"
    admin = "admin"
    staff = "staff"


class Merchant(Base):
    __tablename__ = "merchants"

    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    country: Mapped[str] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class MerchantMember(Base):
    __tablename__ = "merchant_members"
    __table_args__ = (UniqueConstraint("merchant_id", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"))
    subject: Mapped[str] = mapped_column(String(255), index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    created_at: Mapped[datetime]


class MerchantConfig(Base):
    """What a merchant's terminals are told (§3.8, §6): tip, tax, surcharge, branding, EMV.

    Each section is one JSON object, validated by the models of ``viopay.merchants.config`` and
    replaced whole; ``config_version`` grows with every change.
    """

    __tablename__ = "merchant_configs"
    __table_args__ = (CheckConstraint("config_version >= 1", name="config_version_positive"),)

    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"), primary_key=True)
    config_version: Mapped[int]
    tip: Mapped[dict[str, Any]] = mapped_column(JSON)
    tax: Mapped[dict[str, Any]] = mapped_column(JSON)
    surcharge: Mapped[dict[str, Any]] = mapped_column(JSON)
    branding: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Operator overrides of the document's emv section: only the members the operator set.
    emv_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime]
