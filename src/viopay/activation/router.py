"""Attest (§3.5) and the attestation-token endpoints (§3.6-§3.10).

``router`` is what the app mounts. Token endpoints go on ``token_router``, whose mount
dependency checks the attestation token first (§1), so none of them can forget it.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from viopay.activation import chunks, delivery, service
from viopay.activation.attestation import (
    TOKEN_TTL,
    AttestedDevice,
    TokenHeadersDep,
    attest_token,
    issue_token,
)
from viopay.activation.schemas import AttestIn, AttestOut, KeyOut, KeysIn, KeysOut
from viopay.db import transaction
from viopay.deps import (
    DbSession,
    Now,
    RuntimeDep,
    body_schema,
    read_json,
    read_raw_json,
    runtime_of,
)
from viopay.devices import quick
from viopay.devices.authn import AttestHeaders, authenticate_device
from viopay.errors import ViopayError
from viopay.ids import rfc3339
from viopay.metrics import TOKEN_LOOKUPS
from viopay.openapi import errors_for

# Authenticated at mount (viopay.api): the attestation signature's headers (§2.2; the device and
# the signature checked by the endpoint), the token (§2.3).
attest_router = APIRouter(prefix="/pos", tags=["pos activation"])
token_router = APIRouter(prefix="/pos", tags=["pos activation"])
# The token's headers only (§2.3): the chunk endpoint authenticates on a remembered context or
# afresh itself (viopay.activation.chunks).
chunk_router = APIRouter(prefix="/pos", tags=["pos activation"])


@attest_router.post(
    "/attest",
    response_model=AttestOut,
    openapi_extra=body_schema(AttestIn, required=False),
    responses=errors_for(400, 401, 403, 404, 409, 415, 426, 503),
)
async def attest(request: Request, parsed: AttestHeaders, now: Now) -> Response:
    """Prove the identity key (HMAC signature headers) for a 300 s attestation token: on one
    read of the device on PostgreSQL (:mod:`viopay.devices.quick`), else afresh."""
    runtime = runtime_of(request)
    verified = await quick.quick_attest(runtime, parsed, now=now)
    if verified is not None:
        device = verified.device
        service.require_keyed_status(device)
        await read_json(request, AttestIn, optional=True)
        issued = await issue_token(
            runtime.cache, device=device, identity_key=verified.identity_key, now=now
        )
        await quick.record_device_event(
            runtime,
            type=service.ATTESTED,
            device_id=device.device_id,
            merchant_id=device.merchant_id,
            data=service.attested_data(verified.identity_key, issued),
            now=now,
        )
    else:
        async with transaction(runtime.sessions) as db:
            auth = await authenticate_device(db, runtime, parsed, now=now)
            device = auth.device
            service.require_keyed_status(device)
            await read_json(request, AttestIn, optional=True)
            assert auth.identity_key is not None  # a signed request
            issued = await service.attest(
                db, runtime.cache, device=device, identity_key=auth.identity_key, now=now
            )
    answer = AttestOut(
        attestation_token=issued.token,
        expires_in=int(TOKEN_TTL.total_seconds()),
        expires_at=rfc3339(issued.expires_at),
        device_status=device.status.value,
    )
    return Response(answer.model_dump_json(), media_type="application/json")


@token_router.post(
    "/keys",
    response_model=KeysOut,
    openapi_extra=body_schema(KeysIn),
    responses=errors_for(400, 401, 403, 404, 409, 415, 503),
)
async def keys(
    request: Request, auth: AttestedDevice, runtime: RuntimeDep, db: DbSession, now: Now
) -> KeysOut:
    """A new key set: six fresh keys as TR-31 blocks, the TMK under the key transport key."""
    body = await read_json(request, KeysIn)
    service.require_keyed_status(auth.device)
    delivered = await service.deliver_keys(
        db, wrapper=runtime.wrapper, auth=auth, transport_key=body.transport_key, now=now
    )
    key_set = delivered.key_set
    return KeysOut(
        key_set_id=key_set.key_set_id,
        server_transport_key=base64.b64encode(delivered.server_transport_key).decode("ascii"),
        created_at=rfc3339(key_set.created_at),
        expires_at=rfc3339(key_set.expires_at),
        keys=[
            KeyOut(
                type=k.type,
                key_id=k.key_id,
                wrapped_by=k.wrapped_by,
                key_block=k.key_block,
                kcv=k.kcv,
            )
            for k in delivered.keys
        ],
    )


def _ok(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description}}


def _sealed(sealed: delivery.Sealed) -> Response:
    headers = {"ETag": sealed.etag}
    if sealed.body is None:
        return Response(status_code=304, headers=headers)
    return Response(orjson.dumps(sealed.body), media_type="application/json", headers=headers)


@token_router.post(
    "/config",
    response_class=Response,
    openapi_extra=body_schema(delivery.KeySetChoice, required=False),
    responses=_ok("MSK envelope of the config document (§3.8)")
    | errors_for(304, 400, 401, 403, 404, 409, 415, 503),
)
async def config(
    request: Request, auth: AttestedDevice, runtime: RuntimeDep, db: DbSession, now: Now
) -> Response:
    """7a: the config document, sealed under the key set's MSK; 304 on a matching If-None-Match."""
    body = await read_json(request, delivery.KeySetChoice, optional=True)
    sealed = await delivery.config_response(
        db,
        runtime.wrapper,
        device=auth.device,
        body=body,
        if_none_match=request.headers.get("if-none-match"),
        now=now,
    )
    chunks.remember(auth, sealed, key_set_id=body.key_set_id, runtime=runtime)
    return _sealed(sealed)


@chunk_router.post(
    "/terminal-parameters",
    response_class=Response,
    openapi_extra=body_schema(delivery.ChunkRequest),
    responses=_ok("MSK envelope of one gzip chunk plus its chunk member (§3.9)")
    | errors_for(304, 400, 401, 403, 404, 409, 415, 503),
)
async def terminal_parameters(request: Request, headers: TokenHeadersDep, now: Now) -> Response:
    """7b: one 32 768-byte chunk of the gzip-compressed terminal_parameters document."""
    runtime = runtime_of(request)
    if_none_match = request.headers.get("if-none-match")
    if runtime.bookkeeping is not None and if_none_match is None:
        body = await _chunk_request(request)
        if body is not None:
            remembered = await chunks.remembered_chunk(runtime, headers, body, now=now)
            if remembered is not None:
                return _sealed(remembered)
        TOKEN_LOOKUPS.labels("read").inc()
    async with transaction(runtime.sessions) as db:
        auth = await attest_token(db, runtime, headers, now=now)
        body = await read_json(request, delivery.ChunkRequest)
        sealed = await delivery.parameters_response(
            db, runtime.wrapper, device=auth.device, body=body, if_none_match=if_none_match, now=now
        )
    chunks.remember(auth, sealed, key_set_id=body.key_set_id, runtime=runtime)
    return _sealed(sealed)


async def _chunk_request(request: Request) -> delivery.ChunkRequest | None:
    """The body, if it is a valid one; a bad body is answered after authentication (§1)."""
    try:
        return await read_json(request, delivery.ChunkRequest)
    except ViopayError:
        return None


@token_router.post(
    "/activate",
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "MSK envelope {v, kid, iv, ct} of the activation (§3.10)",
                    }
                }
            },
        }
    },
    responses=_ok("MSK envelope of the activation result")
    | errors_for(400, 401, 403, 404, 409, 415, 422, 503),
)
async def activate(
    request: Request, auth: AttestedDevice, runtime: RuntimeDep, db: DbSession, now: Now
) -> Response:
    """8: check the KCVs and make the key set active (the first time: the device is activated)."""
    raw = await read_raw_json(request)
    opened = await delivery.open_activation(db, runtime.wrapper, device=auth.device, raw=raw)
    sealed = await delivery.activate(
        db,
        runtime.wrapper,
        device=auth.device,
        opened=opened,
        grace=timedelta(seconds=runtime.settings.rotation_grace_seconds),
        now=now,
    )
    return Response(orjson.dumps(sealed), media_type="application/json")
