"""PROTOCOL §7 under the merchant API (Bearer + session): endpoints and their deliveries.

``staff`` may read; ``owner`` and ``admin`` may also create, delete, rotate, enable and retry.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from viopay.audit import Actor
from viopay.auth.deps import CurrentSession, ManagingSession
from viopay.auth.sessions import MerchantSession
from viopay.deps import DbSession, Now, RuntimeDep, body_schema, read_json
from viopay.openapi import errors_for
from viopay.pagination import PageParams, page_params
from viopay.webhooks import service
from viopay.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    EndpointCreated,
    EndpointIn,
    EndpointList,
    EndpointOut,
    SecretOut,
)
from viopay.webhooks.urls import system_resolver, validate_url

router = APIRouter(  # a merchant session (§2.5): mounted in viopay.api
    prefix="/merchant", tags=["merchant webhooks"]
)
Page = Annotated[PageParams, Depends(page_params)]


def _actor(session: MerchantSession) -> Actor:
    return Actor(session.principal.kind, session.principal.subject)


@router.post(
    "/webhook-endpoints",
    status_code=201,
    response_model=EndpointCreated,
    openapi_extra=body_schema(EndpointIn),
    responses=errors_for(400, 401, 403, 415, 503),
)
async def create_endpoint(
    request: Request, session: ManagingSession, db: DbSession, runtime: RuntimeDep, now: Now
) -> EndpointCreated:
    """A new endpoint; its secret is in this answer only (and in a rotation's)."""
    body = await read_json(request, EndpointIn)
    url = await validate_url(
        body.url, allow_insecure=runtime.settings.webhook_allow_insecure, resolve=system_resolver
    )
    endpoint, secret = await service.create_endpoint(
        db,
        wrapper=runtime.wrapper,
        merchant_id=session.merchant_id,
        url=url,
        event_types=body.event_types,
        description=body.description,
        actor=_actor(session),
        now=now,
    )
    return EndpointCreated(**EndpointOut.of(endpoint).model_dump(), secret=secret)


@router.get(
    "/webhook-endpoints", response_model=EndpointList, responses=errors_for(400, 401, 403, 503)
)
async def list_endpoints(session: CurrentSession, db: DbSession, page: Page) -> EndpointList:
    result = await service.list_endpoints(db, merchant_id=session.merchant_id, page=page)
    return EndpointList(
        data=[EndpointOut.of(e) for e in result.data], next_cursor=result.next_cursor
    )


@router.get(
    "/webhook-endpoints/{endpoint_id}",
    response_model=EndpointOut,
    responses=errors_for(401, 403, 404, 503),
)
async def get_endpoint(endpoint_id: str, session: CurrentSession, db: DbSession) -> EndpointOut:
    return EndpointOut.of(
        await service.get_endpoint(db, merchant_id=session.merchant_id, endpoint_id=endpoint_id)
    )


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses=errors_for(401, 403, 404, 503),
)
async def delete_endpoint(
    endpoint_id: str, session: ManagingSession, db: DbSession, now: Now
) -> Response:
    await service.delete_endpoint(
        db,
        merchant_id=session.merchant_id,
        endpoint_id=endpoint_id,
        actor=_actor(session),
        now=now,
    )
    return Response(status_code=204)


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=SecretOut,
    responses=errors_for(401, 403, 404, 503),
)
async def rotate_secret(
    endpoint_id: str, session: ManagingSession, db: DbSession, runtime: RuntimeDep, now: Now
) -> SecretOut:
    """A new secret; for 24 h the previous one signs too (two signatures, newest first)."""
    secret = await service.rotate_secret(
        db,
        wrapper=runtime.wrapper,
        merchant_id=session.merchant_id,
        endpoint_id=endpoint_id,
        actor=_actor(session),
        now=now,
    )
    return SecretOut(secret=secret)


@router.post(
    "/webhook-endpoints/{endpoint_id}/enable",
    response_model=EndpointOut,
    responses=errors_for(401, 403, 404, 503),
)
async def enable_endpoint(
    endpoint_id: str, session: ManagingSession, db: DbSession, now: Now
) -> EndpointOut:
    endpoint = await service.enable_endpoint(
        db,
        merchant_id=session.merchant_id,
        endpoint_id=endpoint_id,
        actor=_actor(session),
        now=now,
    )
    return EndpointOut.of(endpoint)


@router.get(
    "/webhook-endpoints/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    responses=errors_for(400, 401, 403, 404, 503),
)
async def list_deliveries(
    endpoint_id: str, session: CurrentSession, db: DbSession, page: Page
) -> DeliveryList:
    result = await service.list_deliveries(
        db, merchant_id=session.merchant_id, endpoint_id=endpoint_id, page=page
    )
    return DeliveryList(
        data=[DeliveryOut.of(d) for d in result.data], next_cursor=result.next_cursor
    )


@router.post(
    "/webhook-deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryOut,
    responses=errors_for(401, 403, 404, 503),
)
async def retry_delivery(
    delivery_id: str, session: ManagingSession, db: DbSession, now: Now
) -> DeliveryOut:
    """One more attempt now, whatever the delivery's status (a pending one keeps its schedule)."""
    delivery = await service.retry_delivery(
        db, merchant_id=session.merchant_id, delivery_id=delivery_id, now=now
    )
    return DeliveryOut.of(delivery)
