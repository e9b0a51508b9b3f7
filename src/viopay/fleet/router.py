"""``POST /pos/heartbeat`` (PROTOCOL §8): HMAC charge headers, an MSK envelope each way.

Counted in the key set's envelope tally, but never refused for it (a terminal past the limit
still learns ``rotate_keys``); ``Idempotency-Key`` is ignored. On PostgreSQL a terminal this
process has seen beats in one statement (:mod:`viopay.fleet.native`); the first heartbeat of a
process, coming online, and every refusal take the portable path below it.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from viopay.db import NativePool
from viopay.deps import Now, RuntimeDep, body_schema, validate
from viopay.errors import ViopayError
from viopay.fleet import native, service
from viopay.fleet.schemas import HeartbeatIn
from viopay.metrics import HEARTBEAT_LOOKUPS
from viopay.openapi import errors_for
from viopay.payments.channel import (
    OpenedRequest,
    ReadNeeded,
    key_set_usage,
    meter,
    open_request,
    seal_answer,
)
from viopay.payments.schemas import EnvelopeOut
from viopay.payments.terminal_auth import (
    LOOKUP_PG,
    AuthenticatedTerminal,
    CurrentRequest,
    SignedRequest,
    authenticate,
    authenticate_remembered,
    forget,
)
from viopay.runtime import Runtime

pos_router = APIRouter(prefix="/pos", tags=["pos fleet"])  # charge headers (§2.4): viopay.api
_BEAT_REMEMBERED = native.beat_remembered_sql(LOOKUP_PG)
_REMEMBERED, _READ, _CHANGED = (
    HEARTBEAT_LOOKUPS.labels(source) for source in ("remembered", "read", "changed")
)


@pos_router.post(
    "/heartbeat",
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses=errors_for(400, 401, 403, 415, 426, 503),
)
async def heartbeat(signed: CurrentRequest, runtime: RuntimeDep, now: Now) -> Response:
    """The terminal's health; the answer says what the terminal should hold (config version,
    parameters digest) and when to beat again."""
    nonce_spent = False
    if runtime.native is not None:
        beaten, nonce_spent = await _beat_remembered(runtime, runtime.native, signed, now)
        if beaten is not None:
            return beaten
        _READ.inc()
    settings = runtime.settings
    async with runtime.sessions() as db, db.begin():
        auth = await authenticate(
            db, runtime=runtime, signed=signed, now=now, nonce_spent=nonce_spent
        )
        opened, report = await _open(db, runtime, auth, signed, now)
        answer = await service.record_heartbeat(
            db,
            device_id=auth.device_id,
            terminal_id=auth.terminal_id,
            merchant_id=auth.merchant_id,
            report=report,
            interval_seconds=settings.heartbeat_interval_seconds,
            now=now,
        )
        usage = key_set_usage(auth, max_envelopes=settings.keyset_max_envelopes, now=now)
        await meter(db, key_set_id=opened.key_set_id, envelopes=opened.envelopes_opened + 1)
    body = seal_answer(opened, auth, answer, rotate=usage.rotate)
    return Response(body, media_type="application/json")


async def _open(
    db: AsyncSession | None,
    runtime: Runtime,
    auth: AuthenticatedTerminal,
    signed: SignedRequest,
    now: datetime,
) -> tuple[OpenedRequest, HeartbeatIn]:
    """The request's envelope opened (``db`` None: no reads) and its report validated."""
    opened = await open_request(
        db,
        wrapper=runtime.wrapper,
        auth=auth,
        content_type=signed.content_type,
        with_body=True,
        with_card=False,
        now=now,
    )
    return opened, validate(HeartbeatIn, opened.plaintext)


async def _beat_remembered(
    runtime: Runtime, pool: NativePool, signed: SignedRequest, now: datetime
) -> tuple[Response | None, bool]:
    """The heartbeat in one statement on the lookup row this process remembered (see
    :mod:`viopay.fleet.native`), and whether the nonce is spent. None, having written nothing
    but the nonce, whenever anything is off the common path (no row remembered, the row
    changed, any refusal, another set's envelope, a device not online): the portable path
    then decides afresh, so every refusal is decided on a fresh read, in the §1 order."""
    found = await authenticate_remembered(runtime, signed, now=now)
    if found is None:
        return None, False
    auth, remembered = found
    settings = runtime.settings
    try:
        try:
            opened, report = await _open(None, runtime, auth, signed, now)
        except ReadNeeded:  # the set's keys not (or no longer) cached in this process
            async with runtime.sessions() as db:
                opened, report = await _open(db, runtime, auth, signed, now)
    except ViopayError:
        return None, True
    if opened.key_set_id != auth.key_set_id:
        return None, True
    changes = remembered.changes(version=signed.version, now=now)
    beaten = await native.beat_remembered(
        pool,
        _BEAT_REMEMBERED,
        lookup=remembered.record,
        max_envelopes=settings.keyset_max_envelopes,
        terminal_id=auth.terminal_id,
        merchant_id=auth.merchant_id,
        device_id=auth.device_id,
        report=report.given(),
        envelopes=opened.envelopes_opened + 1,
        now=now,
        seen_at=now if "last_seen_at" in changes else None,
        version=signed.version,
        touch=bool(changes),
    )
    if beaten is None:
        _CHANGED.inc()
        forget(signed)
        return None, True
    _REMEMBERED.inc()
    remembered.written(changes)
    answer = await service.heartbeat_answer(
        config_version=beaten.config_version,
        own_sha256=beaten.own_sha256,
        default_sha256=beaten.default_sha256,
        interval_seconds=settings.heartbeat_interval_seconds,
        now=now,
    )
    usage = key_set_usage(auth, max_envelopes=settings.keyset_max_envelopes, now=now)
    body = seal_answer(opened, auth, answer, rotate=usage.rotate)
    return Response(body, media_type="application/json"), True
