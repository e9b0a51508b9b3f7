"""Portal pages for webhooks (PROTOCOL §7): endpoints (add, see the secret once, rotate,
enable, delete) and each endpoint's delivery log with a retry button.

Like the other pages, each calls the webhook services the merchant API calls, in a
transaction of its own, with the API's merchant session and role rule.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from viopay.db import transaction
from viopay.deps import validate
from viopay.errors import InvalidRequest, NotFound
from viopay.ids import utcnow
from viopay.pagination import PageParams, decode_cursor
from viopay.portal import rendering
from viopay.portal.web import PREFIX, Form, PortalDep, PortalRoute, Redirect, field, require_change
from viopay.webhooks import service
from viopay.webhooks.schemas import DeliveryOut, EndpointIn, EndpointOut
from viopay.webhooks.urls import system_resolver, validate_url

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)
PAGE_SIZE = 20
BASE = f"{PREFIX}/webhooks"


def _page(request: Request) -> PageParams:
    cursor = request.query_params.get("cursor")
    return PageParams(limit=PAGE_SIZE, cursor=decode_cursor(cursor) if cursor else None)


async def _list(
    request: Request, portal: PortalDep, extra: dict[str, Any], *, status: int = 200
) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        page = await service.list_endpoints(
            db, merchant_id=portal.session.merchant_id, page=_page(request)
        )
    context: dict[str, Any] = {
        "section": "webhooks",
        "endpoints": [EndpointOut.of(e) for e in page.data],
        "next_cursor": page.next_cursor,
        "cursor": request.query_params.get("cursor"),
        "values": {},
        "errors": {},
    }
    return rendering.render(request, "webhooks.html", context | extra, status=status)


@router.get("/webhooks")
async def webhooks_page(request: Request, portal: PortalDep) -> Response:
    return await _list(request, portal, {})


@router.post("/webhooks")
async def add_webhook(request: Request, portal: PortalDep, form: Form) -> Response:
    await require_change(portal)
    values = {"url": field(form, "url").strip(), "description": field(form, "description")}
    try:
        body = validate(
            EndpointIn, {"url": values["url"], "description": values["description"] or None}
        )
        url = await validate_url(
            body.url,
            allow_insecure=portal.runtime.settings.webhook_allow_insecure,
            resolve=system_resolver,
        )
    except InvalidRequest as exc:
        errors = {e["field"]: e["message"] for e in exc.extra.get("errors", [])}
        return await _list(
            request, portal, {"values": values, "errors": errors or {"url": exc.detail}}, status=400
        )
    async with transaction(portal.runtime.sessions) as db:
        endpoint, secret = await service.create_endpoint(
            db,
            wrapper=portal.runtime.wrapper,
            merchant_id=portal.session.merchant_id,
            url=url,
            event_types=None,
            description=body.description,
            actor=portal.actor,
            now=utcnow(),
        )
    # The secret is shown on this page only: it is not stored anywhere we can read it back.
    return await _detail(request, portal, endpoint.endpoint_id, secret=secret, status=201)


async def _detail(
    request: Request,
    portal: PortalDep,
    endpoint_id: str,
    *,
    secret: str | None = None,
    status: int = 200,
) -> Response:
    async with transaction(portal.runtime.sessions) as db:
        merchant_id = portal.session.merchant_id
        endpoint = await service.get_endpoint(db, merchant_id=merchant_id, endpoint_id=endpoint_id)
        deliveries = await service.list_deliveries(
            db, merchant_id=merchant_id, endpoint_id=endpoint_id, page=_page(request)
        )
    return rendering.render(
        request,
        "webhook.html",
        {
            "section": "webhooks",
            "endpoint": EndpointOut.of(endpoint),
            "deliveries": [DeliveryOut.of(d) for d in deliveries.data],
            "next_cursor": deliveries.next_cursor,
            "cursor": request.query_params.get("cursor"),
            "secret": secret,
        },
        status=status,
    )


@router.get("/webhooks/{endpoint_id}")
async def webhook_page(request: Request, endpoint_id: str, portal: PortalDep) -> Response:
    return await _detail(request, portal, endpoint_id)


@router.post("/webhooks/deliveries/{delivery_id}/retry")
async def retry_delivery(
    request: Request, delivery_id: str, portal: PortalDep, form: Form
) -> Response:
    await require_change(portal)
    async with transaction(portal.runtime.sessions) as db:
        delivery = await service.retry_delivery(
            db, merchant_id=portal.session.merchant_id, delivery_id=delivery_id, now=utcnow()
        )
        endpoint_id = delivery.endpoint_id
    portal.state.flash("success", "Retry queued: one more attempt is made now.")
    raise Redirect(f"{BASE}/{endpoint_id}")


@router.post("/webhooks/{endpoint_id}/{action}")
async def webhook_action(
    request: Request, endpoint_id: str, action: str, portal: PortalDep, form: Form
) -> Response:
    if action not in ("rotate", "enable", "delete"):
        raise NotFound("no such action")
    await require_change(portal)
    merchant_id, now = portal.session.merchant_id, utcnow()
    async with transaction(portal.runtime.sessions) as db:
        if action == "rotate":
            secret = await service.rotate_secret(
                db,
                wrapper=portal.runtime.wrapper,
                merchant_id=merchant_id,
                endpoint_id=endpoint_id,
                actor=portal.actor,
                now=now,
            )
        elif action == "enable":
            await service.enable_endpoint(
                db, merchant_id=merchant_id, endpoint_id=endpoint_id, actor=portal.actor, now=now
            )
        else:
            await service.delete_endpoint(
                db, merchant_id=merchant_id, endpoint_id=endpoint_id, actor=portal.actor, now=now
            )
    if action == "rotate":
        return await _detail(request, portal, endpoint_id, secret=secret)
    if action == "enable":
        portal.state.flash("success", "The endpoint is enabled: deliveries resume.")
        raise Redirect(f"{BASE}/{endpoint_id}")
    portal.state.flash("success", "The endpoint was deleted: nothing more is sent to it.")
    raise Redirect(BASE)
