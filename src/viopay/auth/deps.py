"""Bearer-level dependencies: the principal, the merchant session, the role checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from viopay.auth.issuer import Principal
from viopay.auth.sessions import MerchantSession, current_session
from viopay.deps import RuntimeDep
from viopay.errors import Forbidden, Unauthorized


async def bearer_principal(request: Request, runtime: RuntimeDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    verifier = runtime.oidc or runtime.issuer
    assert verifier is not None
    return await verifier.verify(token.strip())


BearerPrincipal = Annotated[Principal, Depends(bearer_principal)]


async def merchant_session(principal: BearerPrincipal, runtime: RuntimeDep) -> MerchantSession:
    return await current_session(runtime.cache, principal)


CurrentSession = Annotated[MerchantSession, Depends(merchant_session)]


async def managing_session(session: CurrentSession) -> MerchantSession:
    """Owners and admins may change things; staff may only read."""
    if not session.can_change:
        raise Forbidden("this role may not change merchant resources")
    return session


ManagingSession = Annotated[MerchantSession, Depends(managing_session)]


async def admin_principal(principal: BearerPrincipal) -> Principal:
    if not principal.is_admin:
        raise Forbidden("the viopay-admin role is required")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
