"""Storing what the processor did (PROTOCOL §4.7): one transaction per intent.

The live request (after its processor call) and recovery (after asking the processor what
happened under the intent's reference) store outcomes through the same functions, so a charge
recovered after a crash is the charge the request would have stored. Each function first closes
the intent with a conditional UPDATE; when that fails, the other party already stored it and
the function returns None having changed nothing.

Functions here take a session in an open transaction and flush; they never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.audit import SYSTEM, Actor, record_event
from viopay.db import NativePool, unsaved
from viopay.metrics import count_charge
from viopay.payments import idempotency, intents, native
from viopay.payments.models import (
    Charge,
    ChargeStatus,
    EntryMode,
    IntentKind,
    IntentState,
    PaymentIntent,
    Refund,
)
from viopay.payments.processors import Authorization
from viopay.payments.schemas import charge_view, refund_view
from viopay.payments.service import charge_event, get_charge
from viopay.webhooks import outbox

TIMEOUT_RESPONSE_CODE = "68"
TIMEOUT_REASON = "processor_timeout"


class KeySpent(Exception):
    """The charge's Idempotency-Key was spent by a reverse-by-key while the charge ran: an
    approval must be reversed at the processor before it is stored (as ``reversed``)."""


@dataclass(frozen=True)
class Stored:
    """What the live request answers: ``plaintext`` with ``status`` (stored for its key as
    ``stored_status``)."""

    status: int
    plaintext: dict[str, Any]
    charge_id: str | None = None
    timed_out: bool = False  # §4.6: answered 504, a retry answers the reversed charge (200)


def _actor(intent: PaymentIntent, recovered: bool) -> Actor:
    """The terminal's device; the user or client of a backoffice refund or cancel (§6), who
    stays its actor when recovery stores it; ``system`` for the rest of what recovery stores."""
    acting = intent.request.get("actor")
    if isinstance(acting, dict):
        return Actor(str(acting["type"]), acting.get("id"))
    return SYSTEM if recovered else Actor("device", intent.device_id)


async def _finish_key(
    db: AsyncSession,
    intent: PaymentIntent,
    *,
    status: int,
    result: dict[str, Any],
    charge_id: str | None,
) -> bool:
    if intent.idempotency_record_id is None:
        return True
    return await idempotency.finish(
        db,
        record_id=intent.idempotency_record_id,
        status_code=status,
        result=result,
        charge_id=charge_id,
    )


@dataclass(frozen=True)
class _ChargeOutcome:
    """What storing a charge intent's outcome writes (either path)."""

    charge: Charge
    outcome: dict[str, Any]
    events: list[native.ChargeEvent]
    actor: Actor
    view: dict[str, Any]
    stored_status: int
    timed_out: bool


def _charge_outcome(
    intent: PaymentIntent,
    authorization: Authorization | None,
    *,
    undone: bool,
    now: datetime,
    recovered: bool,
) -> _ChargeOutcome:
    timed_out = authorization is None
    if authorization is None:
        authorization = Authorization(
            approved=False, response_code=TIMEOUT_RESPONSE_CODE, decline_reason=TIMEOUT_REASON
        )
    if timed_out or (authorization.approved and undone):
        status = ChargeStatus.reversed
    elif authorization.approved:
        status = ChargeStatus.approved
    else:
        status = ChargeStatus.declined
    charge = _charge(intent, authorization, status, now)
    created = {
        "terminal_id": charge.terminal_id,
        "status": status.value,
        "amount": charge.amount,
        "response_code": authorization.response_code,
        **({"recovered": True} if recovered else {}),
    }
    events = [native.ChargeEvent("charge.created", created)]
    if status is ChargeStatus.reversed:
        reason = TIMEOUT_REASON if timed_out else "recovery"
        events.append(
            native.ChargeEvent(
                "charge.reversed", {"terminal_id": charge.terminal_id, "reason": reason}
            )
        )
    return _ChargeOutcome(
        charge=charge,
        outcome={"status": status.value, "response_code": authorization.response_code},
        events=events,
        actor=_actor(intent, recovered),
        view=charge_view(charge),
        stored_status=200 if status is ChargeStatus.reversed else 201,
        timed_out=timed_out,
    )


async def store_charge(
    db: AsyncSession,
    intent: PaymentIntent,
    authorization: Authorization | None,
    *,
    undone: bool,
    now: datetime,
    recovered: bool = False,
    lease_owner: str | None = None,
) -> Stored | None:
    """The charge of a charge intent. ``authorization`` None: the processor timed out and the
    authorisation was reversed (§4.6). ``undone``: approved, then reversed at the processor.
    Raises KeySpent for an approval whose key a reverse-by-key spent meanwhile."""
    made = _charge_outcome(intent, authorization, undone=undone, now=now, recovered=recovered)
    charge = made.charge
    if not await intents.close(
        db,
        intent.intent_id,
        state=IntentState.done,
        outcome=made.outcome,
        now=now,
        lease_owner=lease_owner,
    ):
        return None
    await intents.insert_row(db, charge)
    for event in made.events:  # the data already names the terminal (as charge_event's does)
        record_event(
            db,
            type=event.type,
            actor=made.actor,
            subject_type="charge",
            subject_id=charge.charge_id,
            merchant_id=charge.merchant_id,
            now=now,
            data=event.data,
        )
    if not await _finish_key(
        db, intent, status=made.stored_status, result=made.view, charge_id=charge.charge_id
    ):
        if charge.status is ChargeStatus.approved:
            raise KeySpent(intent.intent_id)
    await db.flush()
    count_charge(charge.status.value, charge.card_brand)
    return Stored(made.stored_status, made.view, charge.charge_id, timed_out=made.timed_out)


async def store_live_charge(
    sessions: async_sessionmaker[AsyncSession],
    pool: NativePool | None,
    intent: PaymentIntent,
    authorization: Authorization | None,
    *,
    undone: bool,
    now: datetime,
) -> Stored | None:
    """:func:`store_charge` for the live request as one transaction (the key set's envelopes
    were counted in the first, :func:`viopay.payments.flow._count_up_front`): on PostgreSQL one
    autocommitted statement (:func:`viopay.payments.native.store_charge`), elsewhere the
    portable path in a session."""
    if pool is None:
        async with sessions() as db, db.begin():
            return await store_charge(db, intent, authorization, undone=undone, now=now)
    made = _charge_outcome(intent, authorization, undone=undone, now=now, recovered=False)
    charge = made.charge
    written = await native.store_charge(
        pool,
        intent,
        charge,
        outcome=made.outcome,
        events=made.events,
        actor=made.actor,
        stored_status=made.stored_status,
        view=made.view,
        now=now,
    )
    if written.key_spent:
        raise KeySpent(intent.intent_id)
    if not written.closed:
        return None
    if written.deliveries:
        outbox.wake()
    count_charge(charge.status.value, charge.card_brand)
    return Stored(made.stored_status, made.view, charge.charge_id, timed_out=made.timed_out)


def _charge(
    intent: PaymentIntent, authorization: Authorization, status: ChargeStatus, now: datetime
) -> Charge:
    body, card = intent.request, intent.request["card"]
    return unsaved(
        Charge,
        charge_id=intent.charge_id,
        terminal_id=intent.terminal_id,
        merchant_id=intent.merchant_id,
        device_id=intent.device_id,
        status=status,
        amount=body["amount"],
        tip_amount=body["tip_amount"],
        tax_amount=body["tax_amount"],
        surcharge_amount=body["surcharge_amount"],
        amount_refunded=0,
        currency=body["currency"],
        reference=body["reference"],
        entry_mode=EntryMode(body["entry_mode"]),
        card_brand=card["brand"],
        card_bin=card["bin"],
        card_last4=card["last4"],
        card_expiry=card["expiry"],
        authorization_code=authorization.authorization_code if authorization.approved else None,
        response_code=authorization.response_code,
        decline_reason=authorization.decline_reason,
        emv_response=authorization.emv_response,
        processor_reference=intent.reference,
        request_nonce=body["nonce"],
        idempotency_key=body["idempotency_key"],
        created_at=now,
        updated_at=now,
    )


async def store_refund(
    db: AsyncSession,
    intent: PaymentIntent,
    *,
    now: datetime,
    recovered: bool = False,
    lease_owner: str | None = None,
) -> Stored | None:
    """The refund of a refund intent the processor made; the charge's amounts follow."""
    if not await intents.close(
        db,
        intent.intent_id,
        state=IntentState.done,
        outcome={"status": "succeeded"},
        now=now,
        lease_owner=lease_owner,
    ):
        return None
    charge = await get_charge(
        db, merchant_id=intent.merchant_id, charge_id=intent.charge_id, lock=True
    )
    amount = int(intent.amount or 0)
    assert intent.refund_id is not None
    refund = Refund(
        refund_id=intent.refund_id,
        charge_id=charge.charge_id,
        merchant_id=charge.merchant_id,
        terminal_id=intent.terminal_id,
        amount=amount,
        reason=intent.request.get("reason"),
        status="succeeded",
        processor_reference=intent.reference,
        request_nonce=intent.request["nonce"],
        idempotency_key=intent.request.get("idempotency_key"),
        created_at=now,
    )
    db.add(refund)
    charge.amount_refunded += amount
    charge.status = (
        ChargeStatus.refunded
        if charge.amount_refunded == charge.amount
        else ChargeStatus.partially_refunded
    )
    charge.updated_at = now
    actor = _actor(intent, recovered)
    record_event(
        db,
        type="refund.created",
        actor=actor,
        subject_type="refund",
        subject_id=refund.refund_id,
        merchant_id=charge.merchant_id,
        now=now,
        data={"charge_id": charge.charge_id, "terminal_id": intent.terminal_id, "amount": amount},
    )
    charge_event(
        db,
        "charge.refunded",
        charge,
        actor,
        now,
        refund_id=refund.refund_id,
        amount=amount,
        amount_refunded=charge.amount_refunded,
        status=charge.status.value,
    )
    await db.flush()
    view = refund_view(refund, charge)
    await _finish_key(db, intent, status=201, result=view, charge_id=None)
    return Stored(201, view)


async def store_undo(
    db: AsyncSession,
    intent: PaymentIntent,
    *,
    now: datetime,
    recovered: bool = False,
    lease_owner: str | None = None,
) -> Stored | None:
    """The charge of a cancel or reverse intent the processor made."""
    target = ChargeStatus.canceled if intent.kind is IntentKind.cancel else ChargeStatus.reversed
    if not await intents.close(
        db,
        intent.intent_id,
        state=IntentState.done,
        outcome={"status": target.value},
        now=now,
        lease_owner=lease_owner,
    ):
        return None
    charge = await get_charge(
        db, merchant_id=intent.merchant_id, charge_id=intent.charge_id, lock=True
    )
    if charge.status is not target:
        charge.status, charge.updated_at = target, now
        charge_event(db, f"charge.{target.value}", charge, _actor(intent, recovered), now)
        await db.flush()
    view = charge_view(charge)
    await _finish_key(db, intent, status=200, result=view, charge_id=None)
    return Stored(200, view)


async def abandon(
    db: AsyncSession,
    intent: PaymentIntent,
    *,
    now: datetime,
    reason: str,
    lease_owner: str | None = None,
) -> bool:
    """The processor never acted on the intent: close it and release its key (a retry runs
    afresh)."""
    if not await intents.close(
        db,
        intent.intent_id,
        state=IntentState.abandoned,
        outcome={"reason": reason},
        now=now,
        lease_owner=lease_owner,
    ):
        return False
    if intent.idempotency_record_id is not None:
        await idempotency.release(db, record_id=intent.idempotency_record_id)
    return True
