"""The audit trail: one event for every state change (who, what, when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Index, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base
from viopay.ids import new_id, rfc3339
from viopay.pagination import Page, PageParams, make_page, paginate


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


# --- reading the trail (GET /merchant/events, the portal's Activity) ---------------------------


class Party(BaseModel):
    type: str
    id: str | None


class EventOut(BaseModel):
    """The §6 event object."""

    id: str
    type: str
    actor: Party
    subject: Party
    data: dict[str, Any]
    created_at: str

    @classmethod
    def of(cls, event: AuditEvent) -> EventOut:
        return cls(
            id=event.event_id,
            type=event.type,
            actor=Party(type=event.actor_type, id=event.actor_id),
            subject=Party(type=event.subject_type, id=event.subject_id),
            data=event.data,
            created_at=rfc3339(event.created_at),
        )


async def merchant_events(
    db: AsyncSession,
    *,
    merchant_id: str,
    page: PageParams,
    types: frozenset[str] | None = None,
    exclude_types: frozenset[str] | None = None,
    subject_id: str | None = None,
) -> Page[AuditEvent]:
    """The merchant's events, newest first; only ``types``, none of ``exclude_types``, or one
    subject's when given."""
    query = select(AuditEvent).where(AuditEvent.merchant_id == merchant_id)
    if types is not None:
        query = query.where(AuditEvent.type.in_(sorted(types)))
    if exclude_types:
        query = query.where(AuditEvent.type.not_in(sorted(exclude_types)))
    if subject_id is not None:
        query = query.where(AuditEvent.subject_id == subject_id)
    rows = (
        await db.scalars(
            paginate(query, at=AuditEvent.created_at, ident=AuditEvent.event_id, params=page)
        )
    ).all()
    return make_page(rows, params=page, at="created_at", ident="event_id")
