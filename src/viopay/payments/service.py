"""Charges (PROTOCOL §4.1, §4.6): the body rules, the processor call, the stored charge.

Functions here take a session and flush; they never commit (the flow owns transactions).
Refunds live in ``refunds.py``, cancel, reverse and reverse-by-key in ``reversals.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.deps import validate
from viopay.errors import InvalidCard, InvalidRequest, NotFound
from viopay.ids import new_id
from viopay.payments.cards import CardData, CardInvalid, check_card
from viopay.payments.models import Charge, ChargeStatus, EntryMode
from viopay.payments.processors import (
    Authorization,
    AuthorizationRequest,
    ChargeRef,
    EncipheredPin,
    Processor,
    ProcessorFailure,
    ProcessorTimedOut,
)
from viopay.payments.schemas import CardIn, ChargeIn

log = structlog.get_logger("viopay.payments")

TIMEOUT_RESPONSE_CODE = "68"
TIMEOUT_REASON = "processor_timeout"
REVERSAL_ATTEMPTS = 3
TIMED_OUT = Authorization(
    approved=False, response_code=TIMEOUT_RESPONSE_CODE, decline_reason=TIMEOUT_REASON
)


@dataclass(frozen=True)
class TerminalScope:
    """Who is asking: the terminal, its device and merchant, and the terminal's currency."""

    terminal_id: str
    device_id: str
    merchant_id: str
    currency: str

    @property
    def actor(self) -> Actor:
        return Actor("device", self.device_id)


# --- charge: the request ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeDraft:
    """A validated charge request, ready for the processor."""

    charge_id: str
    scope: TerminalScope
    body: ChargeIn
    card: CardData
    pin: EncipheredPin | None
    nonce: str
    idempotency_key: str | None


def surcharge_cap(*, amount: int, surcharge: int, tip: int, rate_bps: int) -> int:
    """``rate_bps`` of ``amount - surcharge - tip``, rounded half up."""
    return (rate_bps * (amount - surcharge - tip) + 5_000) // 10_000


def _amount_errors(
    body: ChargeIn, *, currency: str, surcharge_rule: dict[str, Any]
) -> list[dict[str, str]]:
    errors = []
    if body.currency != currency:
        errors.append(
            {"field": "currency", "message": f"must be the terminal's currency {currency}"}
        )
    if body.tip_amount + body.tax_amount + body.surcharge_amount > body.amount:
        errors.append({"field": "amount", "message": "must be at least tip + tax + surcharge"})
    elif body.surcharge_amount > 0:
        errors.extend(_surcharge_errors(body, surcharge_rule))
    return errors


def _surcharge_errors(body: ChargeIn, rule: dict[str, Any]) -> list[dict[str, str]]:
    field = "surcharge_amount"
    if not rule.get("enabled"):
        return [{"field": field, "message": "surcharges are not enabled for this merchant"}]
    max_amount = int(rule.get("max_amount", 0))
    if max_amount and body.surcharge_amount > max_amount:
        return [{"field": field, "message": f"must be at most {max_amount}"}]
    cap = surcharge_cap(
        amount=body.amount,
        surcharge=body.surcharge_amount,
        tip=body.tip_amount,
        rate_bps=int(rule.get("rate_bps", 0)),
    )
    if body.surcharge_amount > cap:
        return [
            {"field": field, "message": f"must be at most {cap} ({rule.get('rate_bps', 0)} bps)"}
        ]
    return []


def build_draft(
    *,
    scope: TerminalScope,
    plaintext: dict[str, Any],
    card: dict[str, Any] | None,
    tpk: bytes | None,
    surcharge_rule: dict[str, Any],
    nonce: str,
    idempotency_key: str | None,
) -> ChargeDraft:
    """§4.1 body members: 400 invalid_request with ``errors``, then 422 invalid_card."""
    body = validate(ChargeIn, plaintext)
    if card is None:
        raise InvalidRequest(
            "the body has invalid members", errors=[{"field": "card", "message": "is required"}]
        )
    card_in = validate(CardIn, card)
    errors = _amount_errors(body, currency=scope.currency, surcharge_rule=surcharge_rule)
    if errors:
        raise InvalidRequest("the body has invalid members", errors=errors)
    try:
        checked = check_card(
            pan=card_in.pan,
            expiry=card_in.expiry,
            track2=card_in.track2,
            cardholder_name=card_in.cardholder_name,
        )
    except CardInvalid as exc:
        raise InvalidCard(str(exc)) from None
    pin = (
        EncipheredPin(block=body.pin_block, tpk=tpk) if body.pin_block is not None and tpk else None
    )
    return ChargeDraft(
        charge_id=new_id("ch_"),
        scope=scope,
        body=body,
        card=checked,
        pin=pin,
        nonce=nonce,
        idempotency_key=idempotency_key,
    )


def charge_ref(charge: Charge | ChargeDraft, processor_reference: str | None = None) -> ChargeRef:
    if isinstance(charge, ChargeDraft):
        return ChargeRef(
            charge.charge_id,
            charge.scope.terminal_id,
            charge.body.amount,
            charge.body.currency,
            None,
        )
    return ChargeRef(
        charge.charge_id,
        charge.terminal_id,
        charge.amount,
        charge.currency,
        charge.processor_reference,
    )


async def authorize(
    processor: Processor, draft: ChargeDraft, *, now: datetime
) -> Authorization | None:
    """Ask the processor. None when it timed out (the authorisation was then reversed);
    ProcessorFailure propagates (502, no charge)."""
    request = AuthorizationRequest(
        charge_id=draft.charge_id,
        terminal_id=draft.scope.terminal_id,
        merchant_id=draft.scope.merchant_id,
        amount=draft.body.amount,
        currency=draft.body.currency,
        entry_mode=draft.body.entry_mode,
        card=draft.card,
        pin=draft.pin,
        emv=draft.body.emv,
        reference=draft.body.reference,
        now=now,
    )
    try:
        return await processor.authorize(request)
    except ProcessorTimedOut:
        await reverse_unanswered(processor, draft)
        return None


async def reverse_unanswered(processor: Processor, draft: ChargeDraft) -> None:
    """Reverse an authorisation whose answer never came (or that cannot be kept)."""
    for attempt in range(1, REVERSAL_ATTEMPTS + 1):
        try:
            await processor.reverse(charge_ref(draft))
            return
        except (ProcessorFailure, ProcessorTimedOut) as exc:
            log.warning(
                "reversal failed",
                charge_id=draft.charge_id,
                attempt=attempt,
                error=type(exc).__name__,
            )
    log.error(
        "reversal not confirmed; reverse it at the processor by hand", charge_id=draft.charge_id
    )


# --- charge: the record -----------------------------------------------------------------------


def record_charge(
    db: AsyncSession, *, draft: ChargeDraft, authorization: Authorization | None, now: datetime
) -> Charge:
    """Store the charge the processor answered (``None``: it timed out and was reversed)."""
    body, card, scope = draft.body, draft.card, draft.scope
    answer = authorization or TIMED_OUT
    if authorization is None:
        status = ChargeStatus.reversed
    else:
        status = ChargeStatus.approved if authorization.approved else ChargeStatus.declined
    charge = Charge(
        charge_id=draft.charge_id,
        terminal_id=scope.terminal_id,
        merchant_id=scope.merchant_id,
        device_id=scope.device_id,
        status=status,
        amount=body.amount,
        tip_amount=body.tip_amount,
        tax_amount=body.tax_amount,
        surcharge_amount=body.surcharge_amount,
        amount_refunded=0,
        currency=body.currency,
        reference=body.reference,
        entry_mode=EntryMode(body.entry_mode),
        card_brand=card.brand,
        card_bin=card.bin,
        card_last4=card.last4,
        card_expiry=card.expiry,
        authorization_code=answer.authorization_code if status is ChargeStatus.approved else None,
        response_code=answer.response_code,
        decline_reason=answer.decline_reason,
        emv_response=answer.emv_response,
        processor_reference=answer.processor_reference,
        request_nonce=draft.nonce,
        idempotency_key=draft.idempotency_key,
        created_at=now,
        updated_at=now,
    )
    db.add(charge)
    charge_event(
        db,
        "charge.created",
        charge,
        scope.actor,
        now,
        status=status.value,
        amount=body.amount,
        response_code=answer.response_code,
    )
    if authorization is None:
        charge_event(db, "charge.reversed", charge, scope.actor, now, reason=TIMEOUT_REASON)
    return charge


def charge_event(
    db: AsyncSession, type: str, charge: Charge, actor: Actor, now: datetime, **data: Any
) -> None:
    record_event(
        db,
        type=type,
        actor=actor,
        subject_type="charge",
        subject_id=charge.charge_id,
        merchant_id=charge.merchant_id,
        now=now,
        data={"terminal_id": charge.terminal_id, **data},
    )


# --- lookups ----------------------------------------------------------------------------------


async def get_charge(
    db: AsyncSession, *, merchant_id: str, charge_id: str, lock: bool = False
) -> Charge:
    """A charge of the merchant (any of its terminals); 404 not_found otherwise."""
    query = select(Charge).where(Charge.charge_id == charge_id, Charge.merchant_id == merchant_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    charge: Charge | None = await db.scalar(query)
    if charge is None:
        raise NotFound("no such charge")
    return charge
