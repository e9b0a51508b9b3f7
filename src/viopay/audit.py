"""The audit trail: one event for every state change (who, what, when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base
from viopay.ids import new_id


class AuditEvent(Base):
    """Every state change: who (actor), what (type, subject, data), when."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_merchant_created", "merchant_id", "created_at", "event_id"),
    )

    event_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str | None] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(255))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime]


@dataclass(frozen=True)
class Actor:
    """Who acted: ``user`` or ``client`` (merchant API, portal), ``device``, ``operator``, ``system``."""

    type: str
    id: str | None

    @classmethod
    def operator(cls, who: str | None = "cli") -> Actor:
        return cls("operator", who)


SYSTEM = Actor("system", None)


def record_event(
    session: AsyncSession,
    *,
    type: str,
    actor: Actor,
    subject_type: str,
    subject_id: str,
    merchant_id: str | None,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        event_id=new_id("evt_"),
        merchant_id=merchant_id,
        type=type,
        actor_type=actor.type,
        actor_id=actor.id,
        subject_type=subject_type,
        subject_id=subject_id,
        data=data or {},
        created_at=now,
    )
    session.add(event)
    return event
