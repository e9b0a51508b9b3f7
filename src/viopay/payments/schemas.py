"""Wire shapes of the charge endpoints (§4) and the merchant charge views (§6).

Request plaintexts are validated strictly (``"12"`` is not 12, ``true`` is not 1); unknown
members are ignored (§0). Response plaintexts are built by :func:`charge_view` and
:func:`refund_view`, the one place a stored charge becomes JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from viopay.ids import rfc3339
from viopay.payments.models import MAX_AMOUNT, Charge, Refund

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7E]{1,255}$"


class _Plaintext(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ChargeIn(_Plaintext):
    """§4.1 plaintext, without ``card`` (decrypted and checked on its own)."""

    amount: int = Field(ge=1, le=MAX_AMOUNT)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    tip_amount: int = Field(default=0, ge=0, le=MAX_AMOUNT)
    tax_amount: int = Field(default=0, ge=0, le=MAX_AMOUNT)
    surcharge_amount: int = Field(default=0, ge=0, le=MAX_AMOUNT)
    reference: str | None = Field(default=None, max_length=64)
    entry_mode: Literal["chip", "contactless", "swipe", "manual"]
    pin_block: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{32}$")
    emv: str | None = Field(default=None, max_length=4096, pattern=r"^(?:[0-9A-Fa-f]{2})+$")
    metadata: dict[str, Any] | None = None


class CardIn(_Plaintext):
    """The card envelope's plaintext (§4.1); the PAN and expiry are judged by cards.py."""

    pan: str = Field(max_length=64)
    expiry: str = Field(max_length=16)
    track2: str | None = Field(default=None, max_length=128)
    cardholder_name: str | None = Field(default=None, max_length=128)


class RefundIn(_Plaintext):
    """§4.2: ``{}`` refunds all that is left."""

    amount: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    reason: str | None = Field(default=None, max_length=255)


class ReverseByKeyIn(_Plaintext):
    """§4.4 reverse-by-key."""

    idempotency_key: str = Field(pattern=IDEMPOTENCY_KEY_PATTERN)


# --- responses ------------------------------------------------------------------------------


class EnvelopeOut(BaseModel):
    """An MSK envelope (§3.7); its plaintext is the object the endpoint documents."""

    v: Literal[1] = 1
    kid: str
    iv: str
    ct: str


class CardOut(BaseModel):
    brand: str
    bin: str
    last4: str
    expiry: str


class ChargeOut(BaseModel):
    id: str
    object: Literal["charge"] = "charge"
    status: str
    amount: int
    currency: str
    amount_refunded: int
    tip_amount: int
    tax_amount: int
    surcharge_amount: int
    reference: str | None
    entry_mode: str
    card: CardOut
    authorization_code: str | None
    response_code: str | None
    decline_reason: str | None
    emv_response: str | None
    terminal_id: str
    merchant_id: str
    created_at: str


class RefundSummary(BaseModel):
    id: str
    object: Literal["refund"] = "refund"
    charge_id: str
    amount: int
    reason: str | None
    status: str
    created_at: str


class RefundOut(RefundSummary):
    """A refund with the charge as it stands after it (§4.2, §6)."""

    charge: ChargeOut


class ChargeDetail(ChargeOut):
    refunds: list[RefundSummary]


class ChargeList(BaseModel):
    data: list[ChargeOut]
    next_cursor: str | None


def charge_view(charge: Charge) -> dict[str, Any]:
    """The charge object of §4.1 (masked card only)."""
    return {
        "id": charge.charge_id,
        "object": "charge",
        "status": charge.status.value,
        "amount": charge.amount,
        "currency": charge.currency,
        "amount_refunded": charge.amount_refunded,
        "tip_amount": charge.tip_amount,
        "tax_amount": charge.tax_amount,
        "surcharge_amount": charge.surcharge_amount,
        "reference": charge.reference,
        "entry_mode": charge.entry_mode.value,
        "card": {
            "brand": charge.card_brand,
            "bin": charge.card_bin,
            "last4": charge.card_last4,
            "expiry": charge.card_expiry,
        },
        "authorization_code": charge.authorization_code,
        "response_code": charge.response_code,
        "decline_reason": charge.decline_reason,
        "emv_response": charge.emv_response,
        "terminal_id": charge.terminal_id,
        "merchant_id": charge.merchant_id,
        "created_at": rfc3339(charge.created_at),
    }


def refund_view(refund: Refund, charge: Charge | None = None) -> dict[str, Any]:
    """The refund object of §4.2; with ``charge`` it carries the charge after the refund."""
    view: dict[str, Any] = {
        "id": refund.refund_id,
        "object": "refund",
        "charge_id": refund.charge_id,
        "amount": refund.amount,
        "reason": refund.reason,
        "status": refund.status,
        "created_at": rfc3339(refund.created_at),
    }
    if charge is not None:
        view["charge"] = charge_view(charge)
    return view


def reversal_view() -> dict[str, Any]:
    """§4.4: reverse-by-key for a key that made no charge."""
    return {"object": "reversal", "charge": None}
