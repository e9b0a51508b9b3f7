"""The merchant's charges (PROTOCOL §6): filters and search, pages both ways, totals for the
filter, the CSV export. One service for the merchant API, the portal and the CLI.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.ids import rfc3339
from viopay.money import major
from viopay.pagination import Page, PageParams, encode_cursor, make_page, paginate
from viopay.payments import refunds, service
from viopay.payments.models import Charge, ChargeStatus
from viopay.payments.schemas import charge_view, refund_view

_LAST4 = re.compile(r"^\d{4}$")
EXPORT_BATCH = 500
SETTLED = (ChargeStatus.approved, ChargeStatus.partially_refunded, ChargeStatus.refunded)


@dataclass(frozen=True)
class ChargeFilter:
    """``GET /merchant/charges`` filters: status, terminal, ``created_from`` (inclusive),
    ``created_to`` (exclusive) and ``q``: a charge id, a reference, or the card's last 4."""

    merchant_id: str
    status: ChargeStatus | None = None
    terminal_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    q: str | None = None


def _search(q: str) -> Any:
    text = q.strip()
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = [
        Charge.charge_id == text,
        func.lower(Charge.reference).like(escaped.lower() + "%", escape="\\"),
    ]
    if _LAST4.match(text):
        matches.append(Charge.card_last4 == text)
    return or_(*matches)


def _where(query: Select[Any], spec: ChargeFilter) -> Select[Any]:
    query = query.where(Charge.merchant_id == spec.merchant_id)
    if spec.status is not None:
        query = query.where(Charge.status == spec.status)
    if spec.terminal_id is not None:
        query = query.where(Charge.terminal_id == spec.terminal_id)
    if spec.created_from is not None:
        query = query.where(Charge.created_at >= spec.created_from)
    if spec.created_to is not None:
        query = query.where(Charge.created_at < spec.created_to)
    if spec.q and spec.q.strip():
        query = query.where(_search(spec.q))
    return query


async def list_charges(db: AsyncSession, spec: ChargeFilter, page: PageParams) -> Page[Charge]:
    """A page newest first, after ``page.cursor``."""
    query = paginate(
        _where(select(Charge), spec), at=Charge.created_at, ident=Charge.charge_id, params=page
    )
    rows = (await db.scalars(query)).all()
    return make_page(rows, params=page, at="created_at", ident="charge_id")


async def page_before(
    db: AsyncSession, spec: ChargeFilter, *, before: tuple[datetime, str], limit: int
) -> list[Charge]:
    """The ``limit`` charges just newer than ``before`` (the previous page), newest first."""
    at, ident = before
    query = (
        _where(select(Charge), spec)
        .where(or_(Charge.created_at > at, and_(Charge.created_at == at, Charge.charge_id > ident)))
        .order_by(Charge.created_at.asc(), Charge.charge_id.asc())
        .limit(limit)
    )
    return list(reversed((await db.scalars(query)).all()))


async def newer_than(db: AsyncSession, spec: ChargeFilter, charge: Charge) -> int:
    """How many charges of the filter come before ``charge`` (its position is this + 1)."""
    at, ident = charge.created_at, charge.charge_id
    query = _where(select(func.count()).select_from(Charge), spec).where(
        or_(Charge.created_at > at, and_(Charge.created_at == at, Charge.charge_id > ident))
    )
    return int(await db.scalar(query) or 0)


def cursor_of(charge: Charge) -> str:
    return encode_cursor(charge.created_at, charge.charge_id)


@dataclass(frozen=True)
class CurrencyTotals:
    currency: str
    count: int
    gross: int  # approved, partially refunded and refunded charges
    refunded: int

    @property
    def net(self) -> int:
        return self.gross - self.refunded


@dataclass(frozen=True)
class Totals:
    """Every charge of the filter: how many, and per currency what was taken and refunded."""

    count: int
    currencies: list[CurrencyTotals] = field(default_factory=list)


async def totals(db: AsyncSession, spec: ChargeFilter) -> Totals:
    settled = Charge.status.in_(SETTLED)
    query = _where(
        select(
            Charge.currency,
            func.count(),
            func.coalesce(func.sum(case((settled, Charge.amount), else_=0)), 0),
            func.coalesce(func.sum(case((settled, Charge.amount_refunded), else_=0)), 0),
        ),
        spec,
    ).group_by(Charge.currency)
    rows = (await db.execute(query)).all()
    per = [CurrencyTotals(str(c), int(n), int(g), int(r)) for c, n, g, r in sorted(rows)]
    return Totals(sum(t.count for t in per), per)


async def charge_detail(db: AsyncSession, *, merchant_id: str, charge_id: str) -> dict[str, Any]:
    """``GET /merchant/charges/{id}``: the charge with its refunds (without their charge)."""
    charge = await service.get_charge(db, merchant_id=merchant_id, charge_id=charge_id)
    made = [refund_view(r) for r in await refunds.refunds_of(db, charge_id)]
    return {**charge_view(charge), "refunds": made}


# --- CSV export ----------------------------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "created_at",
    "status",
    "currency",
    "amount",
    "amount_refunded",
    "tip_amount",
    "tax_amount",
    "surcharge_amount",
    "reference",
    "terminal_id",
    "card_brand",
    "card_last4",
    "entry_mode",
    "authorization_code",
    "response_code",
    "decline_reason",
)


def _csv_row(charge: Charge) -> list[str]:
    cur = charge.currency
    return [
        charge.charge_id,
        rfc3339(charge.created_at),
        charge.status.value,
        cur,
        major(charge.amount, cur),
        major(charge.amount_refunded, cur),
        major(charge.tip_amount, cur),
        major(charge.tax_amount, cur),
        major(charge.surcharge_amount, cur),
        _safe_cell(charge.reference or ""),
        charge.terminal_id,
        charge.card_brand,
        charge.card_last4,
        charge.entry_mode.value,
        charge.authorization_code or "",
        charge.response_code,
        charge.decline_reason or "",
    ]


def _safe_cell(text: str) -> str:
    """A reference is the terminal's free text: one starting like a formula is quoted with a
    leading apostrophe so a spreadsheet shows it instead of running it (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _lines(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


async def export_csv(
    sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]], spec: ChargeFilter
) -> AsyncIterator[str]:
    """Every charge of the filter as CSV, newest first: a header row, then batches of
    ``EXPORT_BATCH`` rows, each read in a short session of its own (nothing held between)."""
    yield _lines([list(CSV_COLUMNS)])
    cursor: tuple[datetime, str] | None = None
    while True:
        params = PageParams(limit=EXPORT_BATCH, cursor=cursor)
        async with sessions() as db:
            query = paginate(
                _where(select(Charge), spec),
                at=Charge.created_at,
                ident=Charge.charge_id,
                params=params,
            )
            rows = list((await db.scalars(query)).all())
        batch = rows[:EXPORT_BATCH]
        if batch:
            yield _lines([_csv_row(c) for c in batch])
        if len(rows) <= EXPORT_BATCH:
            return
        cursor = (batch[-1].created_at, batch[-1].charge_id)
