"""Attest (§3.5) and the attestation-token endpoints (§3.6-§3.10).

``router`` is what the app mounts. Token endpoints go on ``token_router``, whose mount
dependency checks the attestation token first (§1), so none of them can forget it.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request

from viopay.activation import service
from viopay.activation.schemas import AttestIn, AttestOut, KeyOut, KeysIn, KeysOut
from viopay.auth.attestation import TOKEN_TTL, AttestedDevice, AttestSigned, attested_device
from viopay.deps import DbSession, Now, RuntimeDep, body_schema, read_json
from viopay.ids import rfc3339
from viopay.openapi import errors_for

router = APIRouter(prefix="/pos", tags=["pos activation"])
attest_router = APIRouter()
token_router = APIRouter(dependencies=[Depends(attested_device)])


@attest_router.post(
    "/attest",
    response_model=AttestOut,
    openapi_extra=body_schema(AttestIn, required=False),
    responses=errors_for(400, 401, 403, 404, 409, 415, 426, 503),
)
async def attest(
    request: Request, auth: AttestSigned, runtime: RuntimeDep, db: DbSession, now: Now
) -> AttestOut:
    """Prove the identity key (HMAC signature headers) for a 300 s attestation token."""
    service.require_keyed_status(auth.device)
    await read_json(request, AttestIn, optional=True)
    issued = await service.attest(
        db, runtime.cache, device=auth.device, identity_key=auth.identity_key, now=now
    )
    return AttestOut(
        attestation_token=issued.token,
        expires_in=int(TOKEN_TTL.total_seconds()),
        expires_at=rfc3339(issued.expires_at),
        device_status=auth.device.status.value,
    )


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


router.include_router(attest_router)
router.include_router(token_router)
