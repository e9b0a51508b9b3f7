"""Portal charges: search, filters, totals, pages both ways, the CSV export, and a charge with
its refund and cancel (owners and admins), on the same services as the merchant API
(:mod:`viopay.payments.listing`, :mod:`viopay.payments.backoffice`)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response, StreamingResponse

from viopay.db import transaction
from viopay.devices.models import Terminal
from viopay.errors import (
    ChargeNotCancelable,
    ChargeNotRefundable,
    IdempotencyInProgress,
    ProcessorError,
    RefundExceedsCharge,
    ViopayError,
)
from viopay.ids import utcnow
from viopay.money import money
from viopay.pagination import PageParams, decode_cursor
from viopay.payments import backoffice, listing, service
from viopay.payments.models import ChargeStatus
from viopay.payments.processors import app_processor
from viopay.portal import rendering
from viopay.portal.forms import RefundForm, charge_filters, parse_refund_form
from viopay.portal.web import PREFIX, Form, PortalDep, PortalRoute, Redirect, field, require_change

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)
PAGE_SIZE = 20


@router.get("/charges")
async def charges_page(request: Request, portal: PortalDep) -> Response:
    filters, spec = charge_filters(
        request.query_params,
        merchant_id=portal.merchant.merchant_id,
        timezone=portal.merchant.timezone,
    )
    after, before = request.query_params.get("cursor"), request.query_params.get("before")
    context: dict[str, Any] = {"charges": [], "next_cursor": None, "prev_cursor": None}
    async with transaction(portal.runtime.sessions) as db:
        terminals = (
            await db.scalars(
                select(Terminal.terminal_id)
                .where(Terminal.merchant_id == portal.merchant.merchant_id)
                .order_by(Terminal.terminal_id)
            )
        ).all()
        if not filters.errors:
            context = await _page(db, spec, after=after, before=before)
    return rendering.render(
        request,
        "charges.html",
        context
        | {
            "section": "charges",
            "filters": filters,
            "terminals": terminals,
            "statuses": [s.value for s in ChargeStatus],
        },
        status=400 if filters.errors else 200,
    )


async def _page(
    db: Any, spec: listing.ChargeFilter, *, after: str | None, before: str | None
) -> dict[str, Any]:
    """One page (after a cursor, or before one), where it stands ("21–32 of 32"), the totals
    of the filter, and the cursors of the pages on either side."""
    if before:
        rows = await listing.page_before(db, spec, before=decode_cursor(before), limit=PAGE_SIZE)
    else:
        params = PageParams(PAGE_SIZE, decode_cursor(after) if after else None)
        rows = (await listing.list_charges(db, spec, params)).data
    totals = await listing.totals(db, spec)
    if not rows:
        return {"charges": [], "next_cursor": None, "prev_cursor": None, "totals": totals}
    first = await listing.newer_than(db, spec, rows[0])
    last = first + len(rows)
    return {
        "charges": rows,
        "totals": totals,
        "first": first + 1,
        "last": last,
        "prev_cursor": listing.cursor_of(rows[0]) if first > 0 else None,
        "next_cursor": listing.cursor_of(rows[-1]) if last < totals.count else None,
    }


@router.get("/charges/export")
async def export(request: Request, portal: PortalDep) -> Response:
    """Every charge of the filters as CSV (the API's export), streamed."""
    filters, spec = charge_filters(
        request.query_params,
        merchant_id=portal.merchant.merchant_id,
        timezone=portal.merchant.timezone,
    )
    if filters.errors:
        raise Redirect(rendering.with_query(f"{PREFIX}/charges", filters.query()))
    stamp = utcnow().strftime("%Y%m%d-%H%M")
    return StreamingResponse(
        listing.export_csv(portal.runtime.sessions, spec),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="charges-{stamp}.csv"'},
    )


@router.get("/charges/{charge_id}")
async def charge_page(request: Request, charge_id: str, portal: PortalDep) -> Response:
    return await _render_charge(request, portal, charge_id)


async def _render_charge(
    request: Request,
    portal: PortalDep,
    charge_id: str,
    *,
    form: RefundForm | None = None,
    confirm: str | None = None,
    error: str | None = None,
    key: str | None = None,
    status: int = 200,
) -> Response:
    now = utcnow()
    async with transaction(portal.runtime.sessions) as db:
        merchant_id = portal.merchant.merchant_id
        charge = await service.get_charge(db, merchant_id=merchant_id, charge_id=charge_id)
        detail = await listing.charge_detail(db, merchant_id=merchant_id, charge_id=charge_id)
        can_refund = portal.can_change and backoffice.refundable(charge)
        can_cancel = portal.can_change and backoffice.cancelable(charge, now=now)
        left = charge.amount - charge.amount_refunded
    return rendering.render(
        request,
        "charge.html",
        {
            "charge": detail,
            "section": "charges",
            "can_refund": can_refund,
            "can_cancel": can_cancel,
            "left": left,
            "form": form or RefundForm(),
            "confirm": confirm,
            "action_error": error,
            "idempotency_key": key or new_key(),
        },
        status=status,
    )


def new_key() -> str:
    """A fresh Idempotency-Key for each form shown (kept through its confirmation): a double
    submit refunds once."""
    return "portal-" + secrets.token_urlsafe(18)


def _request(portal: PortalDep, charge_id: str, key: str) -> backoffice.Request:
    return backoffice.Request(
        merchant_id=portal.merchant.merchant_id,
        charge_id=charge_id,
        actor=portal.actor,
        idempotency_key=key
        if key and len(key) <= 255 and key.isascii() and " " not in key
        else None,
        now=utcnow(),
    )


def _plain(error: ViopayError) -> str:
    if isinstance(error, ChargeNotRefundable):
        return "This charge cannot be refunded any more: " + error.detail + "."
    if isinstance(error, ChargeNotCancelable):
        return "This charge cannot be canceled: " + error.detail + "."
    if isinstance(error, RefundExceedsCharge):
        return "That is more than is left to refund: " + error.detail + "."
    if isinstance(error, IdempotencyInProgress):
        return "This request is still being processed. Reload the page in a moment."
    if isinstance(error, ProcessorError):
        return (
            "The payment processor did not confirm it. Nothing was refunded or canceled; try again."
        )
    return "The request could not be completed: " + error.detail + "."


@router.post("/charges/{charge_id}/refund")
async def refund(request: Request, charge_id: str, portal: PortalDep, form: Form) -> Response:
    """Step 1 shows what will happen and asks to confirm; step 2 (``confirm``) refunds."""
    await require_change(portal)
    async with transaction(portal.runtime.sessions) as db:
        charge = await service.get_charge(
            db, merchant_id=portal.merchant.merchant_id, charge_id=charge_id
        )
        currency, left = charge.currency, charge.amount - charge.amount_refunded
    typed = parse_refund_form(form, currency=currency, left=left)
    if typed.minor is None:
        return await _render_charge(request, portal, charge_id, form=typed, status=400)
    if field(form, "confirm") != "yes":
        return await _render_charge(
            request,
            portal,
            charge_id,
            form=typed,
            confirm="refund",
            key=field(form, "idempotency_key"),
        )
    body: dict[str, Any] = {"amount": typed.minor}
    if typed.reason:
        body["reason"] = typed.reason
    try:
        done = await backoffice.refund(
            portal.runtime,
            app_processor(request.app.state, portal.runtime.settings, portal.runtime.sessions),
            request=_request(portal, charge_id, field(form, "idempotency_key")),
            body=body,
        )
    except ViopayError as exc:
        if exc.status in (404, 403):
            raise
        return await _render_charge(
            request, portal, charge_id, form=typed, error=_plain(exc), status=exc.status
        )
    after = done.body["charge"]
    portal.state.flash(
        "success",
        f"Refunded {money(done.body['amount'], currency)}. The charge is now "
        f"{rendering.humanize(after['status']).lower()}.",
    )
    raise Redirect(f"{PREFIX}/charges/{charge_id}")


@router.post("/charges/{charge_id}/cancel")
async def cancel(request: Request, charge_id: str, portal: PortalDep, form: Form) -> Response:
    await require_change(portal)
    if field(form, "confirm") != "yes":
        return await _render_charge(
            request, portal, charge_id, confirm="cancel", key=field(form, "idempotency_key")
        )
    try:
        await backoffice.cancel(
            portal.runtime,
            app_processor(request.app.state, portal.runtime.settings, portal.runtime.sessions),
            request=_request(portal, charge_id, field(form, "idempotency_key")),
        )
    except ViopayError as exc:
        if exc.status in (404, 403):
            raise
        return await _render_charge(
            request, portal, charge_id, error=_plain(exc), status=exc.status
        )
    portal.state.flash("success", "Canceled. The card will not be charged.")
    raise Redirect(f"{PREFIX}/charges/{charge_id}")
