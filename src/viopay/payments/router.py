"""Charge endpoints (PROTOCOL §4; HMAC charge headers) and the merchant charge views (§6).

``pos_router`` checks every request's headers at mount (``signed_request``); each route names
its endpoint and what it decides, and :mod:`viopay.payments.flow` runs the rest of the §1
order (authentication included) in its two transactions. ``merchant_router`` needs a Bearer token and a merchant session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from starlette.responses import Response

from viopay.auth.deps import CurrentSession
from viopay.deps import DbSession, Now, PathId, RuntimeDep, body_schema
from viopay.errors import InvalidRequest
from viopay.middleware import request_id_of
from viopay.openapi import errors_for
from viopay.pagination import PageParams, make_page, page_params, paginate
from viopay.payments import flow, refunds, service
from viopay.payments.models import Charge, ChargeStatus
from viopay.payments.processors import Processor, build_processor
from viopay.payments.schemas import (
    ChargeDetail,
    ChargeList,
    ChargeOut,
    EnvelopeOut,
    RefundSummary,
    charge_view,
    refund_view,
)
from viopay.payments.terminal_auth import CurrentRequest
from viopay.signatures import parse_rfc3339

# Authenticated at mount (viopay.api): the HMAC charge headers (§2.4), a merchant session.
pos_router = APIRouter(prefix="/pos", tags=["pos charges"])
merchant_router = APIRouter(prefix="/merchant", tags=["merchant"])

_POS_ERRORS = errors_for(400, 401, 403, 404, 409, 415, 422, 426, 503)
_ENVELOPE = {"model": EnvelopeOut}


async def get_processor(request: Request, runtime: RuntimeDep) -> Processor:
    """The processor chosen by ``VIOPAY_PROCESSOR``, made once per app."""
    processor: Processor | None = getattr(request.app.state, "processor", None)
    if processor is None:
        processor = build_processor(runtime.settings, runtime.sessions)
        request.app.state.processor = processor
    return processor


ProcessorDep = Annotated[Processor, Depends(get_processor)]


async def _call(
    request: Request, signed: CurrentRequest, runtime: RuntimeDep, processor: ProcessorDep, now: Now
) -> flow.Call:
    return flow.Call(
        signed=signed,
        runtime=runtime,
        processor=processor,
        now=now,
        request_id=request_id_of(request.scope),
    )


CallDep = Annotated[flow.Call, Depends(_call)]


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
async def create_charge(call: CallDep) -> Response:
    """Charge a card (§4.1). The body and the answer are MSK envelopes; the answer's plaintext
    is the charge. A decline is a created charge too."""
    return await flow.run(call, flow.CHARGE, flow.decide_charge)


@pos_router.post(
    "/charge/reverse",
    response_model=EnvelopeOut,
    openapi_extra=body_schema(EnvelopeOut),
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def reverse_by_idempotency_key(call: CallDep) -> Response:
    """Reverse the charge this terminal made with an Idempotency-Key (§4.4); plaintext
    ``{"idempotency_key"}``. Answers the charge, or ``{"object":"reversal","charge":null}``."""
    return await flow.run(call, flow.REVERSE_BY_KEY, flow.decide_reverse_by_key)


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
async def refund_charge(charge_id: PathId, call: CallDep) -> Response:
    """Refund all or part of a charge (§4.2); plaintext ``{"amount"?, "reason"?}``."""
    return await flow.run(call, flow.REFUND, flow.decide_refund(charge_id))


@pos_router.post(
    "/charge/{charge_id}/cancel",
    response_model=EnvelopeOut,
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def cancel_charge(charge_id: PathId, call: CallDep) -> Response:
    """Cancel an approved charge with no refund, within 24 h (§4.3). No body."""
    return await flow.run(call, flow.CANCEL, flow.decide_undo(charge_id, cancel=True))


@pos_router.post(
    "/charge/{charge_id}/reverse",
    response_model=EnvelopeOut,
    responses={**_POS_ERRORS, **errors_for(502)},
)
async def reverse_charge(charge_id: PathId, call: CallDep) -> Response:
    """Reverse a charge whose outcome the terminal never learned (§4.3). No body."""
    return await flow.run(call, flow.REVERSE, flow.decide_undo(charge_id, cancel=False))


@pos_router.get("/charge/{charge_id}", response_model=EnvelopeOut, responses=_POS_ERRORS)
async def get_charge(charge_id: PathId, call: CallDep) -> Response:
    """The charge as it stands now (§4.4). No body; signed with an empty BODY."""
    return await flow.run(call, flow.GET, flow.decide_get(charge_id))


# --- merchant views (§6) ----------------------------------------------------------------------


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


@merchant_router.get(
    "/charges", response_model=ChargeList, responses=errors_for(400, 401, 403, 503)
)
async def list_charges(
    session: CurrentSession,
    db: DbSession,
    page: Annotated[PageParams, Depends(page_params)],
    status: Annotated[
        ChargeStatus | None, Query(description="Only charges in this status.")
    ] = None,
    terminal_id: Annotated[str | None, Query(max_length=128)] = None,
    created_from: Annotated[str | None, Query(description="RFC 3339; inclusive.")] = None,
    created_to: Annotated[str | None, Query(description="RFC 3339; exclusive.")] = None,
) -> ChargeList:
    """The merchant's charges, newest first (any role)."""
    start, end = _time_filter("created_from", created_from), _time_filter("created_to", created_to)
    query = select(Charge).where(Charge.merchant_id == session.merchant_id)
    if status is not None:
        query = query.where(Charge.status == status)
    if terminal_id is not None:
        query = query.where(Charge.terminal_id == terminal_id)
    if start is not None:
        query = query.where(Charge.created_at >= start)
    if end is not None:
        query = query.where(Charge.created_at < end)
    rows = (
        await db.scalars(paginate(query, at=Charge.created_at, ident=Charge.charge_id, params=page))
    ).all()
    result = make_page(rows, params=page, at="created_at", ident="charge_id")
    return ChargeList(
        data=[ChargeOut.model_validate(charge_view(c)) for c in result.data],
        next_cursor=result.next_cursor,
    )


@merchant_router.get(
    "/charges/{charge_id}", response_model=ChargeDetail, responses=errors_for(401, 403, 404, 503)
)
async def get_merchant_charge(
    charge_id: PathId, session: CurrentSession, db: DbSession
) -> ChargeDetail:
    """One charge of the merchant with its refunds (any role)."""
    charge = await service.get_charge(db, merchant_id=session.merchant_id, charge_id=charge_id)
    made = [
        RefundSummary.model_validate(refund_view(r))
        for r in await refunds.refunds_of(db, charge_id)
    ]
    return ChargeDetail.model_validate({**charge_view(charge), "refunds": made})
