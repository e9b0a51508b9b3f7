"""Refunds and cancels from the backoffice (PROTOCOL §6): one service for the merchant API and
the portal.

They run in the same phases as a terminal's refund or cancel (:mod:`viopay.payments.flow`):

1. one transaction claims the Idempotency-Key (scope: the merchant), checks the charge under its
   row lock with the terminal's own rules (:func:`refunds.plan_refund`,
   :func:`reversals.plan_undo`: 404 → 409 → 400 → 422) and records the **intent**;
2. the processor call, outside any transaction (:func:`flow.act_on_charge`);
3. one transaction stores the outcome (:mod:`viopay.payments.outcomes`), which recovery does
   instead for an intent whose request died (§4.7).

A 4xx decided for a request with a key is stored for the key and raised once the first
transaction has committed; a replay raises it again (``Idempotent-Replayed``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    ProcessorError,
    ViopayError,
)
from viopay.payments import flow, idempotency, intents, outcomes, refunds, reversals, service
from viopay.payments.models import Charge, ChargeStatus, IntentKind, PaymentIntent
from viopay.payments.processors import Processor, ProcessorFailure, ProcessorTimedOut
from viopay.payments.schemas import charge_view
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.payments")
REPLAYED = {"Idempotent-Replayed": "true"}


@dataclass(frozen=True)
class Done:
    """The answer: a refund (201) or the charge (200); ``replayed`` for a key's stored result."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class Request:
    """Who asks for what, and under which Idempotency-Key."""

    merchant_id: str
    charge_id: str
    actor: Actor
    idempotency_key: str | None
    now: datetime


Plan = Callable[[AsyncSession, Request, int | None], Awaitable["Done | PaymentIntent"]]


def refund_path(charge_id: str) -> str:
    return f"/merchant/charges/{charge_id}/refunds"


def cancel_path(charge_id: str) -> str:
    return f"/merchant/charges/{charge_id}/cancel"


async def refund(
    runtime: Runtime, processor: Processor, *, request: Request, body: dict[str, Any]
) -> Done:
    """§6 ``POST /merchant/charges/{id}/refunds`` ``{"amount"?, "reason"?}`` → 201 the refund."""

    async def plan(db: AsyncSession, req: Request, record_id: int | None) -> Done | PaymentIntent:
        planned = await refunds.plan_refund(
            db, merchant_id=req.merchant_id, charge_id=req.charge_id, plaintext=body
        )
        return await _intent(
            db,
            req,
            record_id,
            IntentKind.refund,
            planned.charge,
            refund_id=service.new_refund_id(),
            amount=planned.amount,
            reason=planned.reason,
        )

    return await _run(
        runtime, processor, request, plan, path=refund_path(request.charge_id), body=body
    )


async def cancel(runtime: Runtime, processor: Processor, *, request: Request) -> Done:
    """§6 ``POST /merchant/charges/{id}/cancel`` → 200 the charge (rules of §4.3)."""

    async def plan(db: AsyncSession, req: Request, record_id: int | None) -> Done | PaymentIntent:
        planned = await reversals.plan_undo(
            db,
            merchant_id=req.merchant_id,
            charge_id=req.charge_id,
            target=ChargeStatus.canceled,
            now=req.now,
        )
        if not planned.act:
            return Done(200, charge_view(planned.charge))
        return await _intent(db, req, record_id, IntentKind.cancel, planned.charge)

    return await _run(
        runtime, processor, request, plan, path=cancel_path(request.charge_id), body={}
    )


def cancelable(charge: Charge, *, now: datetime) -> bool:
    """Whether a cancel would act (what the portal offers)."""
    return reversals.undoable(charge, now=now)


def refundable(charge: Charge) -> bool:
    return charge.status in refunds.REFUNDABLE and charge.amount_refunded < charge.amount


# --- the phases ---------------------------------------------------------------------------------


async def _run(
    runtime: Runtime,
    processor: Processor,
    request: Request,
    plan: Plan,
    *,
    path: str,
    body: dict[str, Any],
) -> Done:
    async with runtime.sessions() as db, db.begin():
        decided = await _claim_and_plan(db, runtime, request, plan, path=path, body=body)
    if isinstance(decided, ViopayError):
        raise decided  # stored for its key in the committed transaction
    if isinstance(decided, Done):
        return decided
    return await _ask_and_store(runtime, processor, request, decided)


async def _claim_and_plan(
    db: AsyncSession,
    runtime: Runtime,
    request: Request,
    plan: Plan,
    *,
    path: str,
    body: dict[str, Any],
) -> Done | PaymentIntent | ViopayError:
    """Transaction 1: the key (409 spent or running, 422 reused, a stored result replayed),
    the checks, the intent."""
    record_id: int | None = None
    if request.idempotency_key is not None:
        fingerprint = idempotency.fingerprint(
            runtime.wrapper.derive(idempotency.FINGERPRINT_PURPOSE),
            method="POST",
            path=path,
            plaintext=body,
            card=None,
        )
        claimed = await idempotency.claim(
            db,
            merchant_id=request.merchant_id,
            key=request.idempotency_key,
            method="POST",
            path=path,
            fingerprint=fingerprint,
            now=request.now,
        )
        if not isinstance(claimed, int):
            idempotency.refuse_busy(claimed)
            return _replay(claimed, fingerprint)
        record_id = claimed
    try:
        decided = await plan(db, request, record_id)
    except ViopayError as error:
        if record_id is None or not flow.is_stored(error):
            raise
        await idempotency.finish(
            db, record_id=record_id, status_code=error.status, result=flow.problem_record(error)
        )
        return error
    if isinstance(decided, Done) and record_id is not None:
        await idempotency.finish(
            db, record_id=record_id, status_code=decided.status, result=decided.body
        )
    return decided


def _replay(state: idempotency.KeyState, fingerprint: str) -> Done:
    if state.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    assert state.status_code is not None and state.result is not None
    if state.status_code >= 400:
        raise replayed_problem(state.result)
    return Done(200, state.result, replayed=True)


def replayed_problem(result: dict[str, Any]) -> ViopayError:
    """A stored 4xx as the error it was, answered again with ``Idempotent-Replayed``."""
    code = str(result["code"])
    extra = {k: v for k, v in result.items() if k not in ("code", "status", "title", "detail")}
    error = _error_class(code, ViopayError)(str(result["detail"]), **extra)
    error.headers.update(REPLAYED)
    return error


def _error_class(code: str, root: type[ViopayError]) -> type[ViopayError]:
    for cls in root.__subclasses__():
        if cls.code == code:
            return cls
        found = _error_class(code, cls)
        if found is not ViopayError:
            return found
    return ViopayError


async def _intent(
    db: AsyncSession,
    request: Request,
    record_id: int | None,
    kind: IntentKind,
    charge: Charge,
    *,
    refund_id: str | None = None,
    amount: int | None = None,
    reason: str | None = None,
) -> PaymentIntent:
    """The intent, on the terminal that took the charge; the refund's nonce is our own (a
    refund row is unique per terminal and nonce), and the actor the user or client."""
    extra: dict[str, Any] = {}
    if kind is IntentKind.refund:
        extra = {"reason": reason, "nonce": "bo_" + secrets.token_hex(16)}
    return await intents.record(
        db,
        kind=kind,
        terminal_id=charge.terminal_id,
        device_id=charge.device_id,
        merchant_id=request.merchant_id,
        charge_id=charge.charge_id,
        now=request.now,
        request={
            "charge_amount": charge.amount,
            "currency": charge.currency,
            "processor_reference": charge.processor_reference,
            "idempotency_key": request.idempotency_key,
            "actor": {"type": request.actor.type, "id": request.actor.id},
            **extra,
        },
        idempotency_record_id=record_id,
        refund_id=refund_id,
        amount=amount,
    )


async def _ask_and_store(
    runtime: Runtime, processor: Processor, request: Request, intent: PaymentIntent
) -> Done:
    """Phase 2 (no transaction open, bounded like a terminal's) and transaction 2."""
    flow.crash_point(intent, "intent")  # fault injection for the crash tests only
    try:
        async with asyncio.timeout(
            flow.processor_deadline(runtime.settings.recovery_delay_seconds)
        ):
            await flow.act_on_charge(processor, intent)
        flow.crash_point(intent, "answered")
    except ProcessorFailure:
        async with runtime.sessions() as db, db.begin():
            await outcomes.abandon(db, intent, now=request.now, reason="processor_error")
        raise ProcessorError() from None
    except (ProcessorTimedOut, TimeoutError):
        log.warning("processor outcome unknown; left to recovery", intent_id=intent.intent_id)
        raise ProcessorError("the processor did not answer; the outcome will be settled") from None
    async with runtime.sessions() as db, db.begin():
        store = outcomes.store_refund if intent.kind is IntentKind.refund else outcomes.store_undo
        stored = await store(db, intent, now=request.now)
    if stored is None:  # recovery stored it first: answer what it stored
        return await _recovered(runtime, request)
    return Done(stored.status, stored.plaintext)


async def _recovered(runtime: Runtime, request: Request) -> Done:
    key = request.idempotency_key
    async with runtime.sessions() as db:
        state = (
            await idempotency.find(db, merchant_id=request.merchant_id, key=key, now=request.now)
            if key
            else None
        )
    if state is None or state.result is None or state.status_code is None:
        raise IdempotencyInProgress("the outcome was settled by recovery; ask again")
    return Done(state.status_code, state.result)
