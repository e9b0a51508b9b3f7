"""Charges (PROTOCOL §4.1, §4.6): the body rules, what the processor is asked, lookups.

Functions here take a session and flush; they never commit (the flow owns transactions).
Refunds live in ``refunds.py``, cancel, reverse and reverse-by-key in ``reversals.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.deps import validate
from viopay.errors import InvalidCard, InvalidRequest, NotFound
from viopay.ids import new_id
from viopay.payments.cards import CardData, CardInvalid, check_card
from viopay.payments.models import Charge
from viopay.payments.processors import AuthorizationRequest, ChargeRef, EncipheredPin
from viopay.payments.schemas import CardIn, ChargeIn


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


def charge_ref(charge: Charge) -> ChargeRef:
    return ChargeRef(
        charge.charge_id,
        charge.terminal_id,
        charge.amount,
        charge.currency,
        charge.processor_reference,
    )


def new_refund_id() -> str:
    return new_id("re_")


def draft_request(draft: ChargeDraft) -> dict[str, Any]:
    """What a charge intent keeps of its draft: all recovery needs to store the charge, and
    no PAN, track data or PIN block (brand, BIN, last 4 and expiry only)."""
    body, card = draft.body, draft.card
    return {
        "amount": body.amount,
        "tip_amount": body.tip_amount,
        "tax_amount": body.tax_amount,
        "surcharge_amount": body.surcharge_amount,
        "currency": body.currency,
        "reference": body.reference,
        "entry_mode": body.entry_mode,
        "card": {"brand": card.brand, "bin": card.bin, "last4": card.last4, "expiry": card.expiry},
        "nonce": draft.nonce,
        "idempotency_key": draft.idempotency_key,
    }


def authorization_request(
    draft: ChargeDraft, *, reference: str, now: datetime
) -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference,
        charge_id=draft.charge_id,
        terminal_id=draft.scope.terminal_id,
        merchant_id=draft.scope.merchant_id,
        amount=draft.body.amount,
        currency=draft.body.currency,
        entry_mode=draft.body.entry_mode,
        card=draft.card,
        pin=draft.pin,
        emv=draft.body.emv,
        order_reference=draft.body.reference,
        now=now,
    )


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
