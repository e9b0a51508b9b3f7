"""GET /merchant/events: the merchant's audit trail, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from viopay.audit import EventOut, Party, merchant_events
from viopay.auth.deps import CurrentSession
from viopay.deps import DbSession
from viopay.openapi import errors_for
from viopay.pagination import PageParams, page_params

router = APIRouter(prefix="/merchant", tags=["merchant"])

__all__ = ["EventList", "EventOut", "Party", "list_events", "router"]


class EventList(BaseModel):
    data: list[EventOut]
    next_cursor: str | None


@router.get("/events", response_model=EventList, responses=errors_for(400, 401, 403, 503))
async def list_events(
    session: CurrentSession, db: DbSession, page: Annotated[PageParams, Depends(page_params)]
) -> EventList:
    result = await merchant_events(db, merchant_id=session.merchant_id, page=page)
    return EventList(data=[EventOut.of(e) for e in result.data], next_cursor=result.next_cursor)
