"""Portal pages: devices (claim, rename, disable, enable, release), charges, config, activity.

Each page calls what the merchant API calls for the same thing — its view functions for reads
(so a page shows exactly what the API answers) and its services for changes — inside one
transaction of its own, with the API's merchant session and role rule.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import FileResponse, RedirectResponse, Response

from viopay.api import devices as device_api
from viopay.api import events as event_api
from viopay.api import merchants as merchant_api
from viopay.audit import AuditEvent
from viopay.db import transaction
from viopay.deps import validate
from viopay.devices import service as devices
from viopay.devices.models import Terminal
from viopay.devices.schemas import ClaimIn, LabelIn
from viopay.errors import InvalidRequest, NotFound, PairingCodeInvalid, RateLimited
from viopay.ids import utcnow
from viopay.merchants.config import update_config
from viopay.merchants.service import get_merchant
from viopay.pagination import PageParams, decode_cursor
from viopay.payments import router as charge_api
from viopay.payments.models import ChargeStatus
from viopay.portal import rendering
from viopay.portal.forms import charge_filters, config_values, parse_config_form
from viopay.portal.web import (
    HOME,
    PREFIX,
    Form,
    PortalDep,
    PortalRoute,
    Redirect,
    field,
    require_change,
)

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)
PAGE_SIZE = 20
REFRESH_MS = 4000


def _page(request: Request) -> PageParams:
    cursor = request.query_params.get("cursor")
    return PageParams(limit=PAGE_SIZE, cursor=decode_cursor(cursor) if cursor else None)


@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse(HOME, status_code=303)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in rendering.STATIC_FILES:
        raise NotFound("no such file")
    path = rendering.STATIC_DIR / name
    return FileResponse(
        path,
        media_type=rendering.STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


# --- devices ----------------------------------------------------------------------------------


async def _device_page(request: Request, portal: PortalDep) -> dict[str, Any]:
    page = _page(request)
    async with transaction(portal.runtime.sessions) as db:
        devices_ = await device_api.list_devices(session=portal.session, db=db, page=page)
    return {
        "devices": devices_.data,
        "next_cursor": devices_.next_cursor,
        "cursor": request.query_params.get("cursor"),
    }


@router.get("/devices")
async def devices_page(request: Request, portal: PortalDep) -> Response:
    context = await _device_page(request, portal)
    return rendering.render(
        request, "devices.html", context | {"section": "devices", "refresh_ms": REFRESH_MS}
    )


@router.get("/devices/list")
async def device_rows(request: Request, portal: PortalDep) -> Response:
    """The device list alone, fetched every few seconds by portal.js."""
    return rendering.render(request, "_device_list.html", await _device_page(request, portal))


@router.get("/devices/{device_id}")
async def device_page(request: Request, device_id: str, portal: PortalDep) -> Response:
    return await _render_device(request, portal, device_id)


async def _render_device(
    request: Request,
    portal: PortalDep,
    device_id: str,
    *,
    label_error: str | None = None,
    label: str | None = None,
    status: int = 200,
) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        device = await device_api.get_merchant_device(
            device_id=device_id, session=portal.session, db=db
        )
        history = (
            await db.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.merchant_id == portal.merchant.merchant_id,
                    AuditEvent.subject_id == device_id,
                )
                .order_by(AuditEvent.created_at.desc(), AuditEvent.event_id.desc())
                .limit(10)
            )
        ).all()
        events = [event_api.EventOut.of(e) for e in history]
    return rendering.render(
        request,
        "device.html",
        {
            "device": device,
            "events": events,
            "section": "devices",
            "label_error": label_error,
            "label": device.label if label is None else label,
        },
        status=status,
    )


@router.post("/devices/{device_id}/{action}")
async def device_action(
    request: Request, device_id: str, action: str, portal: PortalDep, form: Form
) -> Response:
    actions = {
        "disable": device_api.merchant_disable,
        "enable": device_api.merchant_enable,
        "release": device_api.merchant_release,
    }
    if action != "label" and action not in actions:
        raise NotFound("no such action")
    await require_change(portal)
    now = utcnow()
    if action == "label":
        try:
            body = validate(LabelIn, {"label": field(form, "label")})
        except InvalidRequest as exc:
            message = exc.extra.get("errors", [{"message": "invalid"}])[0]["message"]
            return await _render_device(
                request,
                portal,
                device_id,
                label_error=message,
                label=field(form, "label"),
                status=400,
            )
        async with transaction(portal.runtime.sessions) as db:
            device = await device_api._merchant_device(db, portal.session, device_id)
            await devices.set_label(
                db, device=device, label=body.label, actor=portal.actor, now=now
            )
            shown = device.label
        portal.state.flash("success", f"Renamed to “{shown}”." if shown else "Label removed.")
        raise Redirect(f"{PREFIX}/devices/{device_id}")
    async with transaction(portal.runtime.sessions) as db:
        await actions[action](device_id=device_id, session=portal.session, db=db, now=now)
    portal.state.flash(
        "success",
        {
            "disable": f"{device_id} is disabled: it cannot take payments until you enable it again.",
            "enable": f"{device_id} is enabled again. It will attest again before taking payments.",
            "release": f"{device_id} was released. It is no longer one of your terminals.",
        }[action],
    )
    raise Redirect(HOME if action == "release" else f"{PREFIX}/devices/{device_id}")


# --- claim ------------------------------------------------------------------------------------


def _claim_page(
    request: Request,
    *,
    error: str | None = None,
    code: str = "",
    label: str = "",
    status: int = 200,
) -> Response:
    return rendering.render(
        request,
        "claim.html",
        {"error": error, "code": code, "label": label, "section": "claim"},
        status=status,
    )


@router.get("/claim")
async def claim_page(request: Request, portal: PortalDep) -> Response:
    return _claim_page(request)


@router.post("/claim")
async def claim(request: Request, portal: PortalDep, form: Form) -> Response:
    await require_change(portal)
    code, label = field(form, "pairing_code"), field(form, "label")
    try:
        body = validate(ClaimIn, {"pairing_code": code, "label": label.strip() or None})
        async with transaction(portal.runtime.sessions) as db:
            device = await devices.claim_device(
                db,
                portal.runtime.cache,
                wrapper=portal.runtime.wrapper,
                raw_code=body.pairing_code,
                label=body.label,
                merchant_id=portal.merchant.merchant_id,
                actor=portal.actor,
                now=utcnow(),
            )
            device_id, terminal_id = device.device_id, device.terminal_id
    except InvalidRequest as exc:
        fields = {e["field"] for e in exc.extra.get("errors", [])}
        message = (
            "The label is too long: use at most 64 characters."
            if fields == {"label"}
            else "Enter the 6-character pairing code shown on the terminal's screen."
        )
        return _claim_page(request, error=message, code=code, label=label, status=400)
    except PairingCodeInvalid:
        return _claim_page(
            request,
            code=code,
            label=label,
            status=404,
            error=(
                "This pairing code is not valid. Check the code on the terminal's screen: codes expire after "
                "5 minutes, and the terminal shows a new one when you restart pairing."
            ),
        )
    except RateLimited as exc:
        minutes = max(1, round(int(exc.headers["Retry-After"]) / 60))
        return _claim_page(
            request,
            code=code,
            label=label,
            status=429,
            error=(
                f"Too many incorrect pairing codes. For your security, claiming is paused for about "
                f"{minutes} minute{'s' * (minutes > 1)}."
            ),
        )
    portal.state.flash(
        "success",
        f"{device_id} is now your terminal {terminal_id}. It finishes activating on its own.",
    )
    raise Redirect(HOME)


# --- charges ----------------------------------------------------------------------------------


@router.get("/charges")
async def charges_page(request: Request, portal: PortalDep) -> Response:
    filters, arguments = charge_filters(request.query_params, timezone=portal.merchant.timezone)
    async with transaction(portal.runtime.sessions) as db:
        terminals = (
            await db.scalars(
                select(Terminal.terminal_id)
                .where(Terminal.merchant_id == portal.merchant.merchant_id)
                .order_by(Terminal.terminal_id)
            )
        ).all()
        charges = None
        if not filters.errors:
            charges = await charge_api.list_charges(
                session=portal.session, db=db, page=_page(request), **arguments
            )
    return rendering.render(
        request,
        "charges.html",
        {
            "section": "charges",
            "filters": filters,
            "terminals": terminals,
            "statuses": [s.value for s in ChargeStatus],
            "charges": charges.data if charges else [],
            "next_cursor": charges.next_cursor if charges else None,
            "cursor": request.query_params.get("cursor"),
        },
        status=400 if filters.errors else 200,
    )


@router.get("/charges/{charge_id}")
async def charge_page(request: Request, charge_id: str, portal: PortalDep) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        charge = await charge_api.get_merchant_charge(
            charge_id=charge_id, session=portal.session, db=db
        )
    return rendering.render(request, "charge.html", {"charge": charge, "section": "charges"})


# --- config -----------------------------------------------------------------------------------


@router.get("/config")
async def config_page(request: Request, portal: PortalDep) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        config = await merchant_api.get_config(session=portal.session, db=db, now=utcnow())
    return rendering.render(
        request,
        "config.html",
        {
            "section": "config",
            "values": config_values(config.model_dump(mode="json")),
            "errors": {},
            "config_version": config.config_version,
        },
    )


@router.post("/config")
async def save_config(request: Request, portal: PortalDep, form: Form) -> Response:
    await require_change(portal)
    parsed = parse_config_form(form)
    if parsed.changes is None:
        async with transaction(portal.runtime.sessions) as db:
            config = await merchant_api.get_config(session=portal.session, db=db, now=utcnow())
        return rendering.render(
            request,
            "config.html",
            {
                "section": "config",
                "values": parsed.values,
                "errors": parsed.errors,
                "config_version": config.config_version,
            },
            status=400,
        )
    async with transaction(portal.runtime.sessions) as db:
        merchant = await get_merchant(db, portal.merchant.merchant_id)
        before = await merchant_api.get_config(session=portal.session, db=db, now=utcnow())
        after = await update_config(
            db, merchant=merchant, changes=parsed.changes, actor=portal.actor, now=utcnow()
        )
        version = after.config_version
    if version == before.config_version:
        portal.state.flash("info", "Nothing changed: the settings were already as submitted.")
    else:
        portal.state.flash(
            "success", f"Settings saved. Terminals pick up version {version} at their next sync."
        )
    raise Redirect(f"{PREFIX}/config")


# --- activity ---------------------------------------------------------------------------------


@router.get("/events")
async def events_page(request: Request, portal: PortalDep) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        events = await event_api.list_events(session=portal.session, db=db, page=_page(request))
    return rendering.render(
        request,
        "events.html",
        {
            "section": "events",
            "events": events.data,
            "next_cursor": events.next_cursor,
            "cursor": request.query_params.get("cursor"),
        },
    )


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_found(rest: str) -> Response:
    """Unknown portal paths get the portal's HTML 404, not the API's problem+json."""
    raise NotFound("no such page")
