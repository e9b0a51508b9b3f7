"""Activation steps 1–4 (PROTOCOL §3.1–§3.4) and the device admin API (§6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.auth.deps import AdminPrincipal, CurrentSession, ManagingSession
from viopay.auth.sessions import MerchantSession
from viopay.cache import Cache
from viopay.db import bookkeeping_only, transaction
from viopay.deps import (
    DbSession,
    Now,
    PathId,
    RuntimeDep,
    body_schema,
    read_json,
    runtime_of,
)
from viopay.devices import quick, service
from viopay.devices.authn import (
    ActivationHeaders,
    BootstrapHeaders,
    PairingHeaders,
    authenticate_device,
)
from viopay.devices.models import Device
from viopay.devices.schemas import (
    BootstrapOut,
    ClaimIn,
    ClaimOut,
    DeviceOut,
    IdentityKeyIn,
    IdentityKeyOut,
    LabelIn,
    PairingCodeOut,
    ProvisionIn,
    StatusOut,
)
from viopay.ids import rfc3339
from viopay.keysets import lifecycle
from viopay.keysets.schemas import (
    IdentityKeyList,
    IdentityKeyViewOut,
    KeySetList,
    KeySetViewOut,
    RevocationOut,
    RotationRequestedOut,
)
from viopay.keysets.service import release_device
from viopay.merchants.models import Merchant
from viopay.openapi import errors_for
from viopay.pagination import PageParams, page_params
from viopay.runtime import Runtime

# Authenticated at mount (viopay.api): the activation headers (§2.1; bootstrap at any version,
# its device read by the endpoint: viopay.devices.quick).
bootstrap_router = APIRouter(prefix="/pos", tags=["pos activation"])


@asynccontextmanager
async def _afresh(
    runtime: Runtime, parsed: ActivationHeaders, now: datetime, *, bookkeeping: bool = True
) -> AsyncIterator[tuple[Device, AsyncSession]]:
    """The fresh path of a request of the activation headers: the device authenticated in a
    transaction (§1 order). ``bookkeeping``: the request writes nothing but the device's
    ``last_seen_at`` and ``app_version`` (bootstrap, status), so its commit need not wait for
    the disk (:func:`viopay.db.bookkeeping_only`)."""
    async with transaction(runtime.sessions) as db:
        auth = await authenticate_device(db, runtime, parsed, now=now)
        if bookkeeping and auth.device in db.dirty:
            await bookkeeping_only(db)
        yield auth.device, db


@bootstrap_router.post(
    "/bootstrap", response_model=BootstrapOut, responses=errors_for(400, 403, 404, 503)
)
async def bootstrap(request: Request, parsed: BootstrapHeaders, now: Now) -> Response:
    """1: the server's time and versions, and the device's state (§3.1)."""
    runtime = runtime_of(request)
    device_status = await quick.quick_bootstrap(runtime, parsed, now=now)
    if device_status is None:
        async with _afresh(runtime, parsed, now) as (device, _):
            device_status = device.status
    settings = runtime.settings
    answer = BootstrapOut(
        server_time=rfc3339(now),
        min_supported_version=settings.min_pos_version,
        latest_version=settings.latest_version,
        upgrade_required=parsed.upgrade_required,
        device_status=device_status.value,
        poll_interval=service.POLL_INTERVAL,
    )
    return Response(answer.model_dump_json(), media_type="application/json")


# Pairing codes and status polls: the headers and version at mount (viopay.api), the device
# and the signature checked by the endpoint, in one statement on PostgreSQL
# (viopay.devices.quick).
pairing_router = APIRouter(prefix="/pos", tags=["pos activation"])


@pairing_router.post(
    "/pairing-code",
    status_code=201,
    response_model=PairingCodeOut,
    responses=errors_for(400, 403, 404, 409, 426, 429, 503),
)
async def pairing_code(request: Request, parsed: PairingHeaders, now: Now) -> Response:
    """2: a new pairing code for the merchant to type (§3.2); the previous one dies."""
    runtime = runtime_of(request)
    issued = await quick.quick_pairing_code(runtime, parsed, now=now)
    if issued is None:
        async with _afresh(runtime, parsed, now, bookkeeping=False) as (device, db):
            issued = await service.issue_pairing_code(
                db, runtime.cache, wrapper=runtime.wrapper, device=device, now=now
            )
    code, expires_at = issued
    answer = PairingCodeOut(
        pairing_code=code,
        expires_at=rfc3339(expires_at),
        expires_in=int(service.PAIRING_CODE_TTL.total_seconds()),
        poll_interval=service.POLL_INTERVAL,
    )
    return Response(answer.model_dump_json(), status_code=201, media_type="application/json")


@pairing_router.get(
    "/status", response_model=StatusOut, responses=errors_for(400, 403, 404, 426, 429, 503)
)
async def status(request: Request, parsed: PairingHeaders, now: Now) -> Response:
    """3: the device's state while it waits to be claimed (§3.3)."""
    runtime = runtime_of(request)
    answer = await quick.quick_status(runtime, parsed, now=now)
    if answer is None:
        async with _afresh(runtime, parsed, now) as (device, db):
            answer = await _status_afresh(device, runtime.cache, db, now)
    return Response(answer, media_type="application/json")


async def _status_afresh(device: Device, cache: Cache, db: AsyncSession, now: datetime) -> bytes:
    await service.check_status_rate(cache, device_id=device.device_id, now=now)
    expiry = await service.live_code_expiry(db, device=device, now=now)
    merchant = await db.get(Merchant, device.merchant_id) if device.merchant_id else None
    return service.status_answer(
        device_id=device.device_id,
        status=device.status,
        terminal_id=device.terminal_id,
        merchant=(merchant.merchant_id, merchant.name) if merchant else None,
        code_expires_at=expiry,
    )


claim_router = APIRouter(tags=["merchant"])  # a merchant session (§2.5), mounted in viopay.api


@claim_router.post(
    "/pos/claim",
    response_model=ClaimOut,
    openapi_extra=body_schema(ClaimIn),
    responses=errors_for(400, 401, 403, 404, 415, 429, 503),
)
async def claim(
    request: Request, session: ManagingSession, runtime: RuntimeDep, db: DbSession, now: Now
) -> ClaimOut:
    body = await read_json(request, ClaimIn)
    principal = session.principal
    device = await service.claim_device(
        db,
        runtime.cache,
        wrapper=runtime.wrapper,
        raw_code=body.pairing_code,
        label=body.label,
        merchant_id=session.merchant_id,
        actor=Actor(principal.kind, principal.subject),
        now=now,
    )
    assert device.terminal_id is not None and device.claimed_at is not None
    return ClaimOut(
        device_id=device.device_id,
        status=device.status.value,
        merchant_id=session.merchant_id,
        terminal_id=device.terminal_id,
        label=device.label,
        claimed_at=rfc3339(device.claimed_at),
    )


admin_router = APIRouter(prefix="/admin", tags=["admin"])


def _operator(principal: AdminPrincipal) -> Actor:
    return Actor.operator(principal.subject)


@admin_router.post(
    "/devices",
    status_code=201,
    response_model=IdentityKeyOut,
    openapi_extra=body_schema(ProvisionIn),
    responses=errors_for(400, 401, 403, 409, 415, 503),
)
async def provision(
    request: Request, principal: AdminPrincipal, runtime: RuntimeDep, db: DbSession, now: Now
) -> IdentityKeyOut:
    body = await read_json(request, ProvisionIn)
    key = await service.provision_device(
        db,
        wrapper=runtime.wrapper,
        device_id=body.device_id,
        key_id=body.key_id,
        actor=_operator(principal),
        now=now,
    )
    return IdentityKeyOut(
        device_id=key.device_id, key_id=key.key_id, identity_secret=key.identity_secret
    )


@admin_router.post(
    "/devices/{device_id}/identity-keys",
    status_code=201,
    response_model=IdentityKeyOut,
    openapi_extra=body_schema(IdentityKeyIn, required=False),
    responses=errors_for(400, 401, 403, 404, 409, 415, 503),
)
async def add_key(
    device_id: PathId,
    request: Request,
    principal: AdminPrincipal,
    runtime: RuntimeDep,
    db: DbSession,
    now: Now,
) -> IdentityKeyOut:
    body = await read_json(request, IdentityKeyIn, optional=True)
    key = await service.add_identity_key(
        db,
        wrapper=runtime.wrapper,
        device_id=device_id,
        key_id=body.key_id,
        actor=_operator(principal),
        now=now,
    )
    return IdentityKeyOut(
        device_id=key.device_id, key_id=key.key_id, identity_secret=key.identity_secret
    )


@admin_router.get(
    "/devices/{device_id}/identity-keys",
    response_model=IdentityKeyList,
    responses=errors_for(401, 403, 404, 503),
)
async def list_keys(
    device_id: PathId, principal: AdminPrincipal, runtime: RuntimeDep, db: DbSession, now: Now
) -> IdentityKeyList:
    """The device's identity keys: id, KCV, state, age (never the secret)."""
    views = await lifecycle.list_identity_keys(
        db, wrapper=runtime.wrapper, device_id=device_id, now=now
    )
    return IdentityKeyList(device_id=device_id, data=[IdentityKeyViewOut.of(v) for v in views])


@admin_router.delete(
    "/devices/{device_id}/identity-keys/{key_id}",
    response_model=RevocationOut,
    responses=errors_for(401, 403, 404, 503),
)
async def revoke_key(
    device_id: PathId, key_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> RevocationOut:
    report = await lifecycle.revoke_and_report(
        db, device_id=device_id, key_id=key_id, actor=_operator(principal), now=now
    )
    return RevocationOut.of(device_id, report)


@admin_router.get(
    "/terminals/{terminal_id}/key-sets",
    response_model=KeySetList,
    responses=errors_for(401, 403, 404, 503),
)
async def list_key_sets(
    terminal_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> KeySetList:
    """The terminal's key sets, newest first: ids, KCVs, states, ages (never a key)."""
    views = await lifecycle.list_key_sets(db, terminal_id=terminal_id, now=now)
    return KeySetList(terminal_id=terminal_id, data=[KeySetViewOut.of(v) for v in views])


@admin_router.post(
    "/terminals/{terminal_id}/key-sets/rotate",
    response_model=RotationRequestedOut,
    responses=errors_for(401, 403, 404, 409, 503),
)
async def rotate_key_set(
    terminal_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> RotationRequestedOut:
    """Force a key-set rotation: the terminal's next charge answer carries rotate_keys."""
    key_set = await lifecycle.force_rotation(
        db, terminal_id=terminal_id, actor=_operator(principal), now=now
    )
    assert key_set.rotate_requested_at is not None
    return RotationRequestedOut(
        terminal_id=terminal_id,
        key_set_id=key_set.key_set_id,
        rotate_requested_at=rfc3339(key_set.rotate_requested_at),
    )


@admin_router.post(
    "/devices/{device_id}/disable",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def admin_disable(
    device_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> DeviceOut:
    device = await service.get_device(db, device_id)
    return DeviceOut.of(
        await service.set_disabled(
            db, device=device, disabled=True, actor=_operator(principal), now=now
        )
    )


@admin_router.post(
    "/devices/{device_id}/enable",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def admin_enable(
    device_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> DeviceOut:
    device = await service.get_device(db, device_id)
    return DeviceOut.of(
        await service.set_disabled(
            db, device=device, disabled=False, actor=_operator(principal), now=now
        )
    )


@admin_router.post(
    "/devices/{device_id}/release",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def admin_release(
    device_id: PathId, principal: AdminPrincipal, db: DbSession, now: Now
) -> DeviceOut:
    device = await service.get_device(db, device_id)
    return DeviceOut.of(
        await release_device(db, device=device, actor=_operator(principal), now=now)
    )


merchant_router = APIRouter(prefix="/merchant", tags=["merchant"])


class DeviceList(BaseModel):
    data: list[DeviceOut]
    next_cursor: str | None


async def _merchant_device(db: DbSession, session: CurrentSession, device_id: str) -> Device:
    return await service.merchant_device(db, merchant_id=session.merchant_id, device_id=device_id)


@merchant_router.get(
    "/devices", response_model=DeviceList, responses=errors_for(400, 401, 403, 503)
)
async def list_devices(
    session: CurrentSession,
    db: DbSession,
    page: Annotated[PageParams, Depends(page_params)],
    online: Annotated[
        Literal["true", "false"] | None,
        Query(description="Only terminals online (true) or offline (false), PROTOCOL §8."),
    ] = None,
) -> DeviceList:
    result = await service.merchant_devices(
        db, merchant_id=session.merchant_id, page=page, online=online
    )
    return DeviceList(data=[DeviceOut.of(d) for d in result.data], next_cursor=result.next_cursor)


@merchant_router.get(
    "/devices/{device_id}", response_model=DeviceOut, responses=errors_for(401, 403, 404, 503)
)
async def get_merchant_device(
    device_id: PathId, session: CurrentSession, db: DbSession
) -> DeviceOut:
    return DeviceOut.of(await _merchant_device(db, session, device_id))


def _actor(session: MerchantSession) -> Actor:
    return Actor(session.principal.kind, session.principal.subject)


@merchant_router.post(
    "/devices/{device_id}/disable",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def merchant_disable(
    device_id: PathId, session: ManagingSession, db: DbSession, now: Now
) -> DeviceOut:
    device = await _merchant_device(db, session, device_id)
    return DeviceOut.of(
        await service.set_disabled(db, device=device, disabled=True, actor=_actor(session), now=now)
    )


@merchant_router.post(
    "/devices/{device_id}/enable",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def merchant_enable(
    device_id: PathId, session: ManagingSession, db: DbSession, now: Now
) -> DeviceOut:
    device = await _merchant_device(db, session, device_id)
    return DeviceOut.of(
        await service.set_disabled(
            db, device=device, disabled=False, actor=_actor(session), now=now
        )
    )


@merchant_router.post(
    "/devices/{device_id}/release",
    response_model=DeviceOut,
    responses=errors_for(401, 403, 404, 503),
)
async def merchant_release(
    device_id: PathId, session: ManagingSession, db: DbSession, now: Now
) -> DeviceOut:
    device = await _merchant_device(db, session, device_id)
    return DeviceOut.of(await release_device(db, device=device, actor=_actor(session), now=now))


@merchant_router.patch(
    "/devices/{device_id}",
    response_model=DeviceOut,
    openapi_extra=body_schema(LabelIn),
    responses=errors_for(400, 401, 403, 404, 415, 503),
)
async def merchant_rename(
    device_id: PathId, request: Request, session: ManagingSession, db: DbSession, now: Now
) -> DeviceOut:
    """Rename a device: ``{"label"}`` (null or blank clears it; owner or admin)."""
    body = await read_json(request, LabelIn)
    device = await _merchant_device(db, session, device_id)
    return DeviceOut.of(
        await service.set_label(db, device=device, label=body.label, actor=_actor(session), now=now)
    )
