"""GET /merchant/events: the merchant's audit trail, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import select

from viopay.audit import AuditEvent
from viopay.auth.deps import CurrentSession
from viopay.deps import DbSession
from viopay.ids import rfc3339
from viopay.openapi import errors_for
from viopay.pagination import PageParams, make_page, page_params, paginate

router = APIRouter(prefix="/merchant", tags=["merchant"])


class Party(BaseModel):
    type: str
    id: str | None


class EventOut(BaseModel):
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


class EventList(BaseModel):
    data: list[EventOut]
    next_cursor: str | None


@router.get("/events", response_model=EventList, responses=errors_for(400, 401, 403, 503))
async def list_events(
    session: CurrentSession, db: DbSession, page: Annotated[PageParams, Depends(page_params)]
) -> EventList:
    query = paginate(
        select(AuditEvent).where(AuditEvent.merchant_id == session.merchant_id),
        at=AuditEvent.created_at,
        ident=AuditEvent.event_id,
        params=page,
    )
    result = make_page(
        (await db.scalars(query)).all(), params=page, at="created_at", ident="event_id"
    )
    return EventList(data=[EventOut.of(e) for e in result.data], next_cursor=result.next_cursor)
