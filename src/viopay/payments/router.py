"""Charge endpoints (PROTOCOL §4; HMAC charge headers) and the merchant charge views (§6).

``pos_router`` checks every request's headers at mount (``signed_request``); each route names
its endpoint and what it decides, and :mod:`viopay.payments.flow` runs the rest of the §1
order (authentication included) in its two transactions. ``merchant_router`` needs a Bearer token and a merchant session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from viopay.audit import Actor
from viopay.auth.deps import CurrentSession, ManagingSession
from viopay.deps import (
    DbSession,
    Now,
    PathId,
    RuntimeDep,
    body_schema,
    read_raw_json,
    runtime_of,
)
from viopay.errors import InvalidRequest
from viopay.ids import utcnow
from viopay.middleware import request_id_of
from viopay.openapi import errors_for
from viopay.pagination import PageParams, page_params
from viopay.payments import backoffice, flow, listing
from viopay.payments.models import ChargeStatus
from viopay.payments.processors import Processor, app_processor
from viopay.payments.schemas import (
    ChargeDetail,
    ChargeList,
    ChargeOut,
    EnvelopeOut,
    RefundIn,
    RefundOut,
    charge_view,
)
from viopay.payments.terminal_auth import CurrentRequest, SignedRequest, idempotency_key_of
from viopay.signatures import parse_rfc3339

# Authenticated at mount (viopay.api): the HMAC charge headers (§2.4), a merchant session.
pos_router = APIRouter(prefix="/pos", tags=["pos charges"])
merchant_router = APIRouter(prefix="/merchant", tags=["merchant"])

_POS_ERRORS = errors_for(400, 401, 403, 404, 409, 415, 422, 426, 503)
_ENVELOPE = {"model": EnvelopeOut}


async def get_processor(request: Request, runtime: RuntimeDep) -> Processor:
    """The processor chosen by ``VIOPAY_PROCESSOR``, made once per app."""
    return app_processor(request.app.state, runtime.settings, runtime.sessions)


ProcessorDep = Annotated[Processor, Depends(get_processor)]


def _call(request: Request, signed: SignedRequest) -> flow.Call:
    """A charge request's flow.Call, made in the route's body. Its runtime, processor and clock
    are read here, and it is not a dependency itself: FastAPI spends ~0.1 ms resolving each
    dependency, on the hottest routes (issue 10); the clock is the same ``utcnow`` as ``Now``'s."""
    runtime = runtime_of(request)
    return flow.Call(
        signed=signed,
        runtime=runtime,
        processor=app_processor(request.app.state, runtime.settings, runtime.sessions),
        now=utcnow(),
        request_id=request_id_of(request.scope),
    )


# --- POS routes -------------------------------------------------------------------------------


@pos_router.post(
    "/charge",
    status_code=201,
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses={
        200: {**_ENVELOPE, "description": "An idempotent replay"},
        **_POS_ERRORS,
        **errors_for(502, 504),
    },
)
async def create_charge(request: Request, signed: CurrentRequest) -> Response:
    """Charge a card (§4.1). The body and the answer are MSK envelopes; the answer's plaintext
    is the charge. A decline is a created charge too."""
    return await flow.run(_call(request, signed), flow.CHARGE, flow.decide_charge)


@pos_router.post(
    "/charge/reverse",
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def reverse_by_idempotency_key(request: Request, signed: CurrentRequest) -> Response:
    """Reverse the charge this terminal made with an Idempotency-Key (§4.4); plaintext
    ``{"idempotency_key"}``. Answers the charge, or ``{"object":"reversal","charge":null}``."""
    return await flow.run(_call(request, signed), flow.REVERSE_BY_KEY, flow.decide_reverse_by_key)


@pos_router.post(
    "/charge/{charge_id}/refund",
    status_code=201,
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses={
        200: {**_ENVELOPE, "description": "An idempotent replay"},
        **_POS_ERRORS,
        **errors_for(502),
    },
)
async def refund_charge(charge_id: PathId, request: Request, signed: CurrentRequest) -> Response:
    """Refund all or part of a charge (§4.2); plaintext ``{"amount"?, "reason"?}``."""
    return await flow.run(_call(request, signed), flow.REFUND, flow.decide_refund(charge_id))


@pos_router.post(
    "/charge/{charge_id}/cancel",
    response_model=EnvelopeOut,
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def cancel_charge(charge_id: PathId, request: Request, signed: CurrentRequest) -> Response:
    """Cancel an approved charge with no refund, within 24 h (§4.3). No body."""
    return await flow.run(
        _call(request, signed), flow.CANCEL, flow.decide_undo(charge_id, cancel=True)
    )


@pos_router.post(
    "/charge/{charge_id}/reverse",
    response_model=EnvelopeOut,
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def reverse_charge(charge_id: PathId, request: Request, signed: CurrentRequest) -> Response:
    """Reverse a charge whose outcome the terminal never learned (§4.3). No body."""
    return await flow.run(
        _call(request, signed), flow.REVERSE, flow.decide_undo(charge_id, cancel=False)
    )


@pos_router.get("/charge/{charge_id}", response_model=EnvelopeOut, responses=_POS_ERRORS)
async def get_charge(charge_id: PathId, request: Request, signed: CurrentRequest) -> Response:
    """The charge as it stands now (§4.4). No body; signed with an empty BODY."""
    return await flow.run(_call(request, signed), flow.GET, flow.decide_get(charge_id))


# --- merchant views and backoffice actions (§6) -------------------------------------------------


def _time_filter(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "the query has invalid members",
            errors=[{"field": name, "message": "must be an RFC 3339 date-time"}],
        ) from None


async def charge_filter(
    session: CurrentSession,
    status: Annotated[
        ChargeStatus | None, Query(description="Only charges in this status.")
    ] = None,
    terminal_id: Annotated[str | None, Query(max_length=128)] = None,
    created_from: Annotated[str | None, Query(description="RFC 3339; inclusive.")] = None,
    created_to: Annotated[str | None, Query(description="RFC 3339; exclusive.")] = None,
    q: Annotated[
        str | None,
        Query(max_length=128, description="A charge id, a reference, or the card's last 4 digits."),
    ] = None,
) -> listing.ChargeFilter:
    return listing.ChargeFilter(
        merchant_id=session.merchant_id,
        status=status,
        terminal_id=terminal_id,
        created_from=_time_filter("created_from", created_from),
        created_to=_time_filter("created_to", created_to),
        q=q,
    )


FilterDep = Annotated[listing.ChargeFilter, Depends(charge_filter)]


@merchant_router.get(
    "/charges", response_model=ChargeList, responses=errors_for(400, 401, 403, 503)
)
async def list_charges(
    spec: FilterDep, db: DbSession, page: Annotated[PageParams, Depends(page_params)]
) -> ChargeList:
    """The merchant's charges, newest first (any role); ``q`` searches."""
    result = await listing.list_charges(db, spec, page)
    return ChargeList(
        data=[ChargeOut.model_validate(charge_view(c)) for c in result.data],
        next_cursor=result.next_cursor,
    )


@merchant_router.get(
    "/charges/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "Every matching charge, as CSV"},
        **errors_for(400, 401, 403, 503),
    },
)
async def export_charges(spec: FilterDep, runtime: RuntimeDep) -> StreamingResponse:
    """Every charge of the filters as CSV (any role), streamed: amounts in major units, times
    RFC 3339 in UTC."""
    return StreamingResponse(
        listing.export_csv(runtime.sessions, spec),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="charges.csv"'},
    )


@merchant_router.get(
    "/charges/{charge_id}", response_model=ChargeDetail, responses=errors_for(401, 403, 404, 503)
)
async def get_merchant_charge(
    charge_id: PathId, session: CurrentSession, db: DbSession
) -> ChargeDetail:
    """One charge of the merchant with its refunds (any role)."""
    return ChargeDetail.model_validate(
        await listing.charge_detail(db, merchant_id=session.merchant_id, charge_id=charge_id)
    )


def _backoffice_request(
    request: Request, session: ManagingSession, charge_id: str, now: datetime
) -> backoffice.Request:
    principal = session.principal
    return backoffice.Request(
        merchant_id=session.merchant_id,
        charge_id=charge_id,
        actor=Actor(principal.kind, principal.subject),
        idempotency_key=idempotency_key_of(request),
        now=now,
    )


def _answer(done: backoffice.Done) -> Response:
    return JSONResponse(
        done.body, status_code=done.status, headers=backoffice.REPLAYED if done.replayed else None
    )


@merchant_router.post(
    "/charges/{charge_id}/refunds",
    status_code=201,
    response_model=RefundOut,
    openapi_extra=body_schema(RefundIn, required=False),
    responses={
        200: {"model": RefundOut, "description": "An idempotent replay"},
        **errors_for(400, 401, 403, 404, 409, 415, 422, 502, 503),
    },
)
async def refund_charge_backoffice(
    charge_id: PathId,
    request: Request,
    session: ManagingSession,
    runtime: RuntimeDep,
    processor: ProcessorDep,
    now: Now,
) -> Response:
    """Refund all or part of a charge (owner or admin): ``{"amount"?, "reason"?}``, the rules
    of a terminal's refund; optional Idempotency-Key (scope: the merchant)."""
    call = _backoffice_request(request, session, charge_id, now)
    raw = await request.body()
    body = await read_raw_json(request) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return _answer(await backoffice.refund(runtime, processor, request=call, body=body))


@merchant_router.post(
    "/charges/{charge_id}/cancel",
    response_model=ChargeOut,
    responses=errors_for(400, 401, 403, 404, 409, 502, 503),
)
async def cancel_charge_backoffice(
    charge_id: PathId,
    request: Request,
    session: ManagingSession,
    runtime: RuntimeDep,
    processor: ProcessorDep,
    now: Now,
) -> Response:
    """Cancel an approved charge with no refund, within 24 h (owner or admin). No body."""
    call = _backoffice_request(request, session, charge_id, now)
    return _answer(await backoffice.cancel(runtime, processor, request=call))
