"""Merchant administration (§6 admin API)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from viopay.audit import Actor
from viopay.auth.deps import AdminPrincipal, admin_principal
from viopay.deps import DbSession, Now, body_schema, read_json
from viopay.merchants import service
from viopay.merchants.schemas import MemberIn, MemberOut, MerchantIn, MerchantOut
from viopay.openapi import errors_for

admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_principal)])


@admin_router.post(
    "/merchants", status_code=201, response_model=MerchantOut, openapi_extra=body_schema(MerchantIn),
    responses=errors_for(400, 401, 403, 415, 503),
)
async def create_merchant(request: Request, principal: AdminPrincipal, db: DbSession, now: Now) -> MerchantOut:
    body = await read_json(request, MerchantIn)
    merchant = await service.create_merchant(
        db, name=body.name, currency=body.currency, country=body.country, timezone=body.timezone,
        actor=Actor.operator(principal.subject), now=now,
    )
    return MerchantOut.of(merchant)


@admin_router.post(
    "/merchants/{merchant_id}/members", status_code=201, response_model=MemberOut, openapi_extra=body_schema(MemberIn),
    responses=errors_for(400, 401, 403, 404, 409, 415, 503),
)
async def add_member(merchant_id: str, request: Request, principal: AdminPrincipal, db: DbSession, now: Now) -> MemberOut:
    body = await read_json(request, MemberIn)
    member = await service.add_member(
        db, merchant_id=merchant_id, subject=body.subject, role=body.role, actor=Actor.operator(principal.subject), now=now
    )
    return MemberOut(merchant_id=member.merchant_id, subject=member.subject, role=member.role)
