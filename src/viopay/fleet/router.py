"""``POST /pos/heartbeat`` (PROTOCOL §8): HMAC charge headers, an MSK envelope each way.

Counted in the key set's envelope tally, but never refused for it (a terminal past the limit
still learns ``rotate_keys``); ``Idempotency-Key`` is ignored.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from viopay.deps import Now, RuntimeDep, body_schema, validate
from viopay.fleet import service
from viopay.fleet.schemas import HeartbeatIn
from viopay.openapi import errors_for
from viopay.payments.channel import key_set_usage, meter, open_request, seal_answer
from viopay.payments.schemas import EnvelopeOut
from viopay.payments.terminal_auth import CurrentRequest, authenticate

pos_router = APIRouter(prefix="/pos", tags=["pos fleet"])  # charge headers (§2.4): viopay.api


@pos_router.post(
    "/heartbeat",
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses=errors_for(400, 401, 403, 415, 426, 503),
)
async def heartbeat(signed: CurrentRequest, runtime: RuntimeDep, now: Now) -> Response:
    """The terminal's health; the answer says what the terminal should hold (config version,
    parameters digest) and when to beat again."""
    settings = runtime.settings
    async with runtime.sessions() as db, db.begin():
        auth = await authenticate(db, runtime=runtime, signed=signed, now=now)
        opened = await open_request(
            db,
            wrapper=runtime.wrapper,
            auth=auth,
            content_type=signed.content_type,
            with_body=True,
            with_card=False,
            now=now,
        )
        report = validate(HeartbeatIn, opened.plaintext)
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
