"""Portal pages: devices (claim, rename, disable, enable, release), config, activity.

Each page calls the services the merchant API calls for the same thing (never the API's
routes), inside one transaction of its own, with the API's merchant session and role rule.
Charges live in :mod:`viopay.portal.charges`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import FileResponse, RedirectResponse, Response

from viopay.audit import EventOut, merchant_events
from viopay.db import transaction
from viopay.deps import validate
from viopay.devices import service as devices
from viopay.devices.schemas import ClaimIn, DeviceOut, LabelIn
from viopay.errors import InvalidRequest, NotFound, PairingCodeInvalid, RateLimited
from viopay.ids import utcnow
from viopay.keysets.service import release_device
from viopay.merchants.config import MerchantConfigOut, get_config, update_config
from viopay.merchants.service import get_merchant
from viopay.pagination import PageParams, decode_cursor
from viopay.portal import activity, rendering
from viopay.portal.forms import config_values, parse_config_form
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
        devices_ = await devices.merchant_devices(
            db, merchant_id=portal.merchant.merchant_id, page=page
        )
        shown = [DeviceOut.of(d) for d in devices_.data]
    return {
        "devices": shown,
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
        device = DeviceOut.of(
            await devices.merchant_device(
                db, merchant_id=portal.merchant.merchant_id, device_id=device_id
            )
        )
        history = await merchant_events(
            db,
            merchant_id=portal.merchant.merchant_id,
            page=PageParams(limit=10, cursor=None),
            subject_id=device_id,
        )
        events = [EventOut.of(e) for e in history.data]
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


async def _device(db: AsyncSession, portal: PortalDep, device_id: str) -> Any:
    return await devices.merchant_device(
        db, merchant_id=portal.merchant.merchant_id, device_id=device_id
    )


@router.post("/devices/{device_id}/{action}")
async def device_action(
    request: Request, device_id: str, action: str, portal: PortalDep, form: Form
) -> Response:
    if action not in ("label", "disable", "enable", "release"):
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
            device = await _device(db, portal, device_id)
            await devices.set_label(
                db, device=device, label=body.label, actor=portal.actor, now=now
            )
            shown = device.label
        portal.state.flash("success", f"Renamed to “{shown}”." if shown else "Label removed.")
        raise Redirect(f"{PREFIX}/devices/{device_id}")
    async with transaction(portal.runtime.sessions) as db:
        device = await _device(db, portal, device_id)
        if action == "release":
            await release_device(db, device=device, actor=portal.actor, now=now)
        else:
            await devices.set_disabled(
                db, device=device, disabled=action == "disable", actor=portal.actor, now=now
            )
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


# --- config -----------------------------------------------------------------------------------


async def _config(db: AsyncSession, portal: PortalDep) -> MerchantConfigOut:
    merchant = await get_merchant(db, portal.merchant.merchant_id)
    return MerchantConfigOut.of(await get_config(db, merchant=merchant, now=utcnow()))


@router.get("/config")
async def config_page(request: Request, portal: PortalDep) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        config = await _config(db, portal)
    return rendering.render(
        request,
        "config.html",
        {
            "section": "config",
            "values": config_values(
                config.model_dump(mode="json"), currency=portal.merchant.currency
            ),
            "errors": {},
            "config_version": config.config_version,
        },
    )


@router.post("/config")
async def save_config(request: Request, portal: PortalDep, form: Form) -> Response:
    await require_change(portal)
    parsed = parse_config_form(form, currency=portal.merchant.currency)
    if parsed.changes is None:
        async with transaction(portal.runtime.sessions) as db:
            config = await _config(db, portal)
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
        before = await _config(db, portal)
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
    """Merchant-relevant events by default; ``?show=all`` adds the terminals' housekeeping."""
    show_all = request.query_params.get("show") == "all"
    async with transaction(portal.runtime.sessions) as db:
        events = await merchant_events(
            db,
            merchant_id=portal.merchant.merchant_id,
            page=_page(request),
            exclude_types=None if show_all else activity.TECHNICAL,
        )
        names = await activity.names_for(db, events.data)
    rows = [
        activity.describe(e, names, currency=portal.merchant.currency, tz=portal.merchant.timezone)
        for e in events.data
    ]
    return rendering.render(
        request,
        "events.html",
        {
            "section": "events",
            "events": rows,
            "show_all": show_all,
            "next_cursor": events.next_cursor,
            "cursor": request.query_params.get("cursor"),
        },
    )


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_found(rest: str) -> Response:
    """Unknown portal paths get the portal's HTML 404, not the API's problem+json."""
    raise NotFound("no such page")
