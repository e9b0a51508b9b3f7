"""POST /client/session, POST /session/initiate, GET /.well-known/jwks.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from viopay.audit import Actor
from viopay.auth.clients import authenticate_client, create_client
from viopay.auth.deps import AdminPrincipal, BearerPrincipal
from viopay.auth.issuer import ADMIN_ROLE
from viopay.auth.schemas import (
    AccessToken,
    ClientCredentials,
    ClientIn,
    ClientOut,
    SessionInitiate,
    SessionOut,
)
from viopay.auth.sessions import initiate_session
from viopay.deps import DbSession, Now, RuntimeDep, body_schema, read_json
from viopay.errors import InvalidRequest
from viopay.ids import rfc3339
from viopay.merchants.models import Role
from viopay.openapi import errors_for

router = APIRouter(tags=["auth"])  # public: client credentials, the JWKS
bearer_router = APIRouter(tags=["auth"])  # a Bearer token, any role (mounted in viopay.api)


@router.post(
    "/client/session",
    response_model=AccessToken,
    openapi_extra=body_schema(ClientCredentials),
    responses=errors_for(400, 401, 415, 503),
)
async def client_session(
    request: Request, runtime: RuntimeDep, db: DbSession, now: Now
) -> AccessToken:
    body = await read_json(request, ClientCredentials)
    if runtime.oidc is not None:
        grant = await runtime.oidc.client_credentials(body.client_id, body.client_secret)
        return AccessToken(
            access_token=grant["access_token"], expires_in=int(grant.get("expires_in", 300))
        )
    assert runtime.issuer is not None
    client = await authenticate_client(
        db, wrapper=runtime.wrapper, client_id=body.client_id, client_secret=body.client_secret
    )
    roles = [ADMIN_ROLE] if client.admin else []
    token, ttl = runtime.issuer.issue(subject=client.client_id, roles=roles, kind="client", now=now)
    return AccessToken(access_token=token, expires_in=ttl)


@bearer_router.post(
    "/session/initiate",
    status_code=201,
    response_model=SessionOut,
    openapi_extra=body_schema(SessionInitiate),
    responses=errors_for(400, 401, 403, 415, 503),
)
async def session_initiate(
    request: Request, principal: BearerPrincipal, runtime: RuntimeDep, db: DbSession, now: Now
) -> SessionOut:
    body = await read_json(request, SessionInitiate)
    session = await initiate_session(
        db, runtime.cache, principal=principal, merchant_id=body.merchant_id, now=now
    )
    return SessionOut(
        session_id=session.session_id,
        merchant_id=session.merchant_id,
        role=session.role.value,
        expires_at=rfc3339(session.expires_at),
    )


@router.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    if runtime.issuer is None:
        return {"keys": []}
    return runtime.issuer.jwks()


admin_router = APIRouter(prefix="/admin", tags=["admin"])  # the admin level, mounted in viopay.api


@admin_router.post(
    "/clients",
    status_code=201,
    response_model=ClientOut,
    openapi_extra=body_schema(ClientIn),
    responses=errors_for(400, 401, 403, 404, 415, 503),
)
async def create_api_client(
    request: Request, principal: AdminPrincipal, runtime: RuntimeDep, db: DbSession, now: Now
) -> ClientOut:
    """The API equivalent of `viopay client create` (the secret is shown once)."""
    body = await read_json(request, ClientIn)
    if body.admin == (body.merchant_id is not None) or (body.merchant_id is None) != (
        body.role is None
    ):
        raise InvalidRequest("give either merchant_id and role, or admin: true")
    client = await create_client(
        db,
        wrapper=runtime.wrapper,
        merchant_id=body.merchant_id,
        role=Role(body.role) if body.role else None,
        admin=body.admin,
        actor=Actor.operator(principal.subject),
        now=now,
    )
    return ClientOut(
        client_id=client.client_id,
        client_secret=client.client_secret,
        merchant_id=client.merchant_id,
        role=client.role.value if client.role else None,
        admin=client.admin,
    )
