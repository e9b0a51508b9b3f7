"""Keyset pagination for merchant lists (PROTOCOL §6): newest first, an opaque cursor."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from viopay.errors import InvalidRequest

T = TypeVar("T")


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: tuple[datetime, str] | None


async def page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1-100.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=decode_cursor(cursor) if cursor else None)


def encode_cursor(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), ident])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Our own cursors only: an aware datetime in range and an id string; anything else (a naive
    or date-only time, an out-of-range offset, a NUL, a number) is 400, never a query."""
    try:
        at, ident = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("naive")
        moment = moment.astimezone(UTC)
        if not isinstance(ident, str) or not 0 < len(ident) <= 128 or "\x00" in ident:
            raise ValueError("ident")
        return moment, ident
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise InvalidRequest(
            "cursor is not valid", errors=[{"field": "cursor", "message": "not a cursor"}]
        ) from None


def paginate(
    query: Select[Any],
    *,
    at: InstrumentedAttribute[Any],
    ident: InstrumentedAttribute[Any],
    params: PageParams,
) -> Select[Any]:
    """Order newest first by (at, ident) and start after the cursor; fetch one extra row."""
    if params.cursor is not None:
        c_at, c_id = params.cursor
        query = query.where(or_(at < c_at, and_(at == c_at, ident < c_id)))
    return query.order_by(at.desc(), ident.desc()).limit(params.limit + 1)


@dataclass
class Page(Generic[T]):
    data: list[T]
    next_cursor: str | None


def make_page(rows: Sequence[Any], *, params: PageParams, at: str, ident: str) -> Page[Any]:
    items = list(rows[: params.limit])
    more = len(rows) > params.limit
    cursor = (
        encode_cursor(getattr(items[-1], at), getattr(items[-1], ident)) if more and items else None
    )
    return Page(items, cursor)
