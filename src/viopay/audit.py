"""The audit trail: one event for every state change (who, what, when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from viopay.ids import new_id
from viopay.merchants.models import AuditEvent


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
