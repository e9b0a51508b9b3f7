"""Merchant administration (§6 admin API) and the merchant config (§6 merchant API)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from viopay.audit import Actor
from viopay.auth.deps import AdminPrincipal, CurrentSession, ManagingSession
from viopay.configuration.emv import effective_emv
from viopay.configuration.schemas import EmvOverrides, EmvSection
from viopay.deps import DbSession, Now, PathId, body_schema, read_json
from viopay.merchants import config, service
from viopay.merchants.config import MerchantConfigIn, MerchantConfigOut
from viopay.merchants.schemas import MemberIn, MemberOut, MerchantIn, MerchantOut
from viopay.openapi import errors_for

admin_router = APIRouter(prefix="/admin", tags=["admin"])


@admin_router.post(
    "/merchants",
    status_code=201,
    response_model=MerchantOut,
    openapi_extra=body_schema(MerchantIn),
    responses=errors_for(400, 401, 403, 415, 503),
)
async def create_merchant(
    request: Request, principal: AdminPrincipal, db: DbSession, now: Now
) -> MerchantOut:
    body = await read_json(request, MerchantIn)
    merchant = await service.create_merchant(
        db,
        name=body.name,
        currency=body.currency,
        country=body.country,
        timezone=body.timezone,
        actor=Actor.operator(principal.subject),
        now=now,
    )
    return MerchantOut.of(merchant)


@admin_router.post(
    "/merchants/{merchant_id}/members",
    status_code=201,
    response_model=MemberOut,
    openapi_extra=body_schema(MemberIn),
    responses=errors_for(400, 401, 403, 404, 409, 415, 503),
)
async def add_member(
    merchant_id: PathId, request: Request, principal: AdminPrincipal, db: DbSession, now: Now
) -> MemberOut:
    body = await read_json(request, MemberIn)
    member = await service.add_member(
        db,
        merchant_id=merchant_id,
        subject=body.subject,
        role=body.role,
        actor=Actor.operator(principal.subject),
        now=now,
    )
    return MemberOut(merchant_id=member.merchant_id, subject=member.subject, role=member.role)


@admin_router.get(
    "/merchants/{merchant_id}/emv",
    response_model=EmvSection,
    responses=errors_for(401, 403, 404, 409, 503),
)
async def get_emv(
    merchant_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> EmvSection:
    """The emv section the merchant's terminals get: defaults with the operator's overrides."""
    merchant = await service.get_merchant(db, merchant_id)
    merchant_config = await config.get_config(db, merchant=merchant, now=now)
    return effective_emv(merchant, merchant_config.emv_overrides)


@admin_router.put(
    "/merchants/{merchant_id}/emv",
    response_model=EmvSection,
    openapi_extra=body_schema(EmvOverrides),
    responses=errors_for(400, 401, 403, 404, 409, 415, 503),
)
async def put_emv(
    merchant_id: PathId, request: Request, principal: AdminPrincipal, db: DbSession, now: Now
) -> EmvSection:
    """Replace the operator's overrides of the emv section (``{}`` restores the defaults)."""
    merchant = await service.get_merchant(db, merchant_id)
    body = await read_json(request, EmvOverrides)
    section = effective_emv(merchant, body.stored())  # 409 before anything is stored
    await config.set_emv_overrides(
        db,
        merchant=merchant,
        overrides=body.stored(),
        actor=Actor.operator(principal.subject),
        now=now,
    )
    return section


merchant_router = APIRouter(prefix="/merchant", tags=["merchant"])


@merchant_router.get(
    "/config", response_model=MerchantConfigOut, responses=errors_for(401, 403, 503)
)
async def get_config(session: CurrentSession, db: DbSession, now: Now) -> MerchantConfigOut:
    """The merchant config (any role)."""
    merchant = await service.get_merchant(db, session.merchant_id)
    return MerchantConfigOut.of(await config.get_config(db, merchant=merchant, now=now))


@merchant_router.put(
    "/config",
    response_model=MerchantConfigOut,
    openapi_extra=body_schema(MerchantConfigIn),
    responses=errors_for(400, 401, 403, 415, 503),
)
async def put_config(
    request: Request, session: ManagingSession, db: DbSession, now: Now
) -> MerchantConfigOut:
    """Replace any of tip, tax, surcharge and branding (owner or admin)."""
    body = await read_json(request, MerchantConfigIn)
    merchant = await service.get_merchant(db, session.merchant_id)
    principal = session.principal
    updated = await config.update_config(
        db, merchant=merchant, changes=body, actor=Actor(principal.kind, principal.subject), now=now
    )
    return MerchantConfigOut.of(updated)
