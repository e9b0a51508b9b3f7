"""Webhook endpoints (PROTOCOL §7): create, read, delete, rotate, enable; deliveries, retry.

Services flush and never commit; the caller owns the transaction. Secrets are wrapped under
the master key (the context names the endpoint) and leave the server only in the answer to a
create or a rotation.
"""

from __future__ import annotations

import base64
import os
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import SYSTEM, Actor, record_event
from viopay.crypto.webhooks import SECRET_PREFIX
from viopay.crypto.wrapping import KeyWrapper
from viopay.errors import NotFound
from viopay.ids import new_id
from viopay.pagination import Page, PageParams, make_page, paginate
from viopay.webhooks.models import (
    DeliveryStatus,
    EndpointStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def _context(endpoint_id: str) -> str:
    return f"webhook-secret:{endpoint_id}"


def wrap_secret(wrapper: KeyWrapper, endpoint_id: str, secret: str) -> bytes:
    return wrapper.wrap(secret.encode("ascii"), context=_context(endpoint_id))


def signing_secrets(wrapper: KeyWrapper, endpoint: WebhookEndpoint, *, now: datetime) -> list[str]:
    """The secrets that sign a delivery now, newest first (two for 24 h after a rotation)."""
    context = _context(endpoint.endpoint_id)
    secrets = [wrapper.unwrap(endpoint.secret_wrapped, context=context).decode("ascii")]
    if (
        endpoint.previous_secret_wrapped is not None
        and endpoint.previous_secret_until is not None
        and now < endpoint.previous_secret_until
    ):
        secrets.append(
            wrapper.unwrap(endpoint.previous_secret_wrapped, context=context).decode("ascii")
        )
    return secrets


def _event(
    db: AsyncSession, endpoint: WebhookEndpoint, what: str, *, actor: Actor, now: datetime
) -> None:
    record_event(
        db,
        type=f"webhook_endpoint.{what}",
        actor=actor,
        subject_type="webhook_endpoint",
        subject_id=endpoint.endpoint_id,
        merchant_id=endpoint.merchant_id,
        now=now,
        data={"url": endpoint.url},
    )


async def create_endpoint(
    db: AsyncSession,
    *,
    wrapper: KeyWrapper,
    merchant_id: str,
    url: str,
    event_types: list[str] | None,
    description: str | None,
    actor: Actor,
    now: datetime,
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its secret (shown to the caller once). ``url`` is checked already."""
    endpoint_id = new_id("we_")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        endpoint_id=endpoint_id,
        merchant_id=merchant_id,
        url=url,
        event_types=event_types,
        description=description,
        status=EndpointStatus.enabled,
        secret_wrapped=wrap_secret(wrapper, endpoint_id, secret),
        created_at=now,
    )
    db.add(endpoint)
    await db.flush()
    _event(db, endpoint, "created", actor=actor, now=now)
    await db.flush()
    return endpoint, secret


async def get_endpoint(
    db: AsyncSession, *, merchant_id: str, endpoint_id: str, lock: bool = False
) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.endpoint_id == endpoint_id,
        WebhookEndpoint.merchant_id == merchant_id,
        WebhookEndpoint.status != EndpointStatus.deleted,
    )
    if lock:
        query = query.with_for_update()
    endpoint = (await db.scalars(query)).one_or_none()
    if endpoint is None:
        raise NotFound("no such webhook endpoint")
    return endpoint


async def list_endpoints(
    db: AsyncSession, *, merchant_id: str, page: PageParams
) -> Page[WebhookEndpoint]:
    query = paginate(
        select(WebhookEndpoint).where(
            WebhookEndpoint.merchant_id == merchant_id,
            WebhookEndpoint.status != EndpointStatus.deleted,
        ),
        at=WebhookEndpoint.created_at,
        ident=WebhookEndpoint.endpoint_id,
        params=page,
    )
    rows = (await db.scalars(query)).all()
    return make_page(rows, params=page, at="created_at", ident="endpoint_id")


async def delete_endpoint(
    db: AsyncSession, *, merchant_id: str, endpoint_id: str, actor: Actor, now: datetime
) -> None:
    """Gone for the API, and nothing more is sent to it (pending retries end as failed)."""
    endpoint = await get_endpoint(db, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    endpoint.status, endpoint.deleted_at = EndpointStatus.deleted, now
    await db.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(status=DeliveryStatus.failed, next_attempt_at=None, manual_at=None)
    )
    await db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .values(manual_at=None)
    )
    _event(db, endpoint, "deleted", actor=actor, now=now)
    await db.flush()


async def rotate_secret(
    db: AsyncSession,
    *,
    wrapper: KeyWrapper,
    merchant_id: str,
    endpoint_id: str,
    actor: Actor,
    now: datetime,
) -> str:
    """A new secret; the current one keeps signing beside it for 24 h (the oldest is dropped)."""
    endpoint = await get_endpoint(db, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    secret = new_secret()
    endpoint.previous_secret_wrapped = endpoint.secret_wrapped
    endpoint.previous_secret_until = now + ROTATION_OVERLAP
    endpoint.secret_wrapped = wrap_secret(wrapper, endpoint_id, secret)
    _event(db, endpoint, "secret_rotated", actor=actor, now=now)
    await db.flush()
    return secret


async def enable_endpoint(
    db: AsyncSession, *, merchant_id: str, endpoint_id: str, actor: Actor, now: datetime
) -> WebhookEndpoint:
    endpoint = await get_endpoint(db, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    if endpoint.status is EndpointStatus.disabled:
        endpoint.status, endpoint.failing_since = EndpointStatus.enabled, None
        _event(db, endpoint, "enabled", actor=actor, now=now)
        await db.flush()
    return endpoint


async def disable_endpoint(db: AsyncSession, endpoint: WebhookEndpoint, *, now: datetime) -> None:
    """After 3 days of failed deliveries (the worker decides; actor ``system``)."""
    endpoint.status = EndpointStatus.disabled
    _event(db, endpoint, "disabled", actor=SYSTEM, now=now)
    await db.flush()


async def list_deliveries(
    db: AsyncSession, *, merchant_id: str, endpoint_id: str, page: PageParams
) -> Page[WebhookDelivery]:
    await get_endpoint(db, merchant_id=merchant_id, endpoint_id=endpoint_id)
    query = paginate(
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id),
        at=WebhookDelivery.created_at,
        ident=WebhookDelivery.delivery_id,
        params=page,
    )
    rows = (await db.scalars(query)).all()
    return make_page(rows, params=page, at="created_at", ident="delivery_id")


async def retry_delivery(
    db: AsyncSession, *, merchant_id: str, delivery_id: str, now: datetime
) -> WebhookDelivery:
    """One more attempt now, whatever the status; a pending delivery keeps its schedule."""
    delivery = (
        await db.scalars(
            select(WebhookDelivery)
            .join(WebhookEndpoint, WebhookEndpoint.endpoint_id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.delivery_id == delivery_id,
                WebhookDelivery.merchant_id == merchant_id,
                WebhookEndpoint.status != EndpointStatus.deleted,
            )
            .with_for_update(of=WebhookDelivery)
        )
    ).one_or_none()
    if delivery is None:
        raise NotFound("no such webhook delivery")
    delivery.manual_at = now
    await db.flush()
    return delivery
