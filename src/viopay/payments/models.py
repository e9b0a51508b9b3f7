"""Charges, refunds and idempotency records (PROTOCOL §4).

A charge keeps the card's brand, BIN, last four digits and expiry, and nothing else of it: the
PAN, track data and PIN never reach a table. Amounts are integers in minor units, guarded by
CHECK constraints; uniqueness of ``(terminal_id, request_nonce)`` and of
``(terminal_id, idempotency_key)`` is what keeps two server processes from making two charges
for one request.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base
from viopay.devices import models as _devices  # noqa: F401  the tables these keys refer to
from viopay.merchants import models as _merchants  # noqa: F401

MAX_AMOUNT = 99_999_999


class ChargeStatus(enum.StrEnum):
    approved = "approved"
    declined = "declined"
    partially_refunded = "partially_refunded"
    refunded = "refunded"
    canceled = "canceled"
    reversed = "reversed"


class EntryMode(enum.StrEnum):
    chip = "chip"
    contactless = "contactless"
    swipe = "swipe"
    manual = "manual"


class IdempotencyState(enum.StrEnum):
    """``in_progress`` while the first request runs, ``done`` once its result is stored, and
    ``spent_by_reverse`` when a reverse-by-key found no charge for the key (§4.4)."""

    in_progress = "in_progress"
    done = "done"
    spent_by_reverse = "spent_by_reverse"


def _enum(cls: type[enum.Enum], length: int = 24) -> Enum:
    return Enum(
        cls, native_enum=False, length=length, validate_strings=True, create_constraint=True
    )


class Charge(Base):
    __tablename__ = "charges"
    __table_args__ = (
        UniqueConstraint("terminal_id", "request_nonce"),
        Index("ix_charges_merchant_created", "merchant_id", "created_at", "charge_id"),
        Index("ix_charges_terminal_idempotency_key", "terminal_id", "idempotency_key"),
        CheckConstraint(f"amount >= 1 AND amount <= {MAX_AMOUNT}", name="amount_range"),
        CheckConstraint("tip_amount >= 0", name="tip_amount_nonnegative"),
        CheckConstraint("tax_amount >= 0", name="tax_amount_nonnegative"),
        CheckConstraint("surcharge_amount >= 0", name="surcharge_amount_nonnegative"),
        CheckConstraint(
            "tip_amount + tax_amount + surcharge_amount <= amount", name="parts_within_amount"
        ),
        CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount", name="refunded_within_amount"
        ),
    )

    charge_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"))
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    status: Mapped[ChargeStatus] = mapped_column(_enum(ChargeStatus))
    amount: Mapped[int]
    tip_amount: Mapped[int] = mapped_column(default=0)
    tax_amount: Mapped[int] = mapped_column(default=0)
    surcharge_amount: Mapped[int] = mapped_column(default=0)
    amount_refunded: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str] = mapped_column(String(3))
    reference: Mapped[str | None] = mapped_column(String(64))
    entry_mode: Mapped[EntryMode] = mapped_column(_enum(EntryMode, 16))
    card_brand: Mapped[str] = mapped_column(String(16))
    card_bin: Mapped[str] = mapped_column(String(6))
    card_last4: Mapped[str] = mapped_column(String(4))
    card_expiry: Mapped[str] = mapped_column(String(4))
    authorization_code: Mapped[str | None] = mapped_column(String(6))
    response_code: Mapped[str] = mapped_column(String(2))
    decline_reason: Mapped[str | None] = mapped_column(String(64))
    emv_response: Mapped[str | None] = mapped_column(Text)
    # The processor's own reference, for refunds, voids and reversals at the acquirer.
    processor_reference: Mapped[str | None] = mapped_column(String(64))
    request_nonce: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"Charge(charge_id={self.charge_id!r}, status={self.status.value!r})"


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("terminal_id", "request_nonce"),
        Index("ix_refunds_charge_created", "charge_id", "created_at"),
        CheckConstraint(f"amount >= 1 AND amount <= {MAX_AMOUNT}", name="amount_range"),
    )

    refund_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    charge_id: Mapped[str] = mapped_column(ForeignKey("charges.charge_id"))
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"))
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.terminal_id"))
    amount: Mapped[int]
    reason: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="succeeded")
    processor_reference: Mapped[str | None] = mapped_column(String(64))
    request_nonce: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"Refund(refund_id={self.refund_id!r}, charge_id={self.charge_id!r})"


class IdempotencyRecord(Base):
    """One Idempotency-Key of one terminal (§4.5) or, for the merchant API's refunds and cancels,
    of one merchant (§6: ``terminal_id`` null, ``merchant_id`` set), kept 24 h.

    ``result`` is the stored answer's plaintext: the charge or refund object (masked card data
    only) for a 2xx, the problem's members for a 4xx. It is sealed anew on every replay.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("terminal_id", "idempotency_key"),
        UniqueConstraint("merchant_id", "idempotency_key"),
        CheckConstraint("(terminal_id IS NULL) <> (merchant_id IS NULL)", name="one_scope"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    terminal_id: Mapped[str | None] = mapped_column(ForeignKey("terminals.terminal_id"))
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.merchant_id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[IdempotencyState] = mapped_column(_enum(IdempotencyState))
    status_code: Mapped[int | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The charge this key created (POST /pos/charge only): what reverse-by-key reverses.
    charge_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    def __repr__(self) -> str:
        return (
            f"IdempotencyRecord(terminal_id={self.terminal_id!r}, state={self.state.value!r}, "
            f"status_code={self.status_code!r})"
        )


class IntentKind(enum.StrEnum):
    """What the server is about to ask the processor (PROTOCOL §4.7)."""

    charge = "charge"
    refund = "refund"
    cancel = "cancel"
    reverse = "reverse"


class IntentState(enum.StrEnum):
    """``pending`` from the transaction that records it until its outcome is stored; then
    ``done`` (the processor acted), or ``abandoned`` (it never did: a 502, or a call recovery
    found it never received)."""

    pending = "pending"
    done = "done"
    abandoned = "abandoned"


class PaymentIntent(Base):
    """One processor call, recorded before it is made (§4.7).

    ``reference`` is what the processor keeps and can be asked about; ``request`` holds what
    recovery needs to store the outcome without the request (for a charge: amounts, masked card
    data, nonce; never a PAN, track data or PIN block). Recovery takes an intent by writing
    ``lease_owner``/``lease_until`` in a conditional UPDATE: one process at a time.
    """

    __tablename__ = "payment_intents"
    __table_args__ = (
        UniqueConstraint("reference"),
        Index("ix_payment_intents_state_created", "state", "created_at"),
        Index("ix_payment_intents_charge", "charge_id", "state"),
    )

    intent_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[IntentKind] = mapped_column(_enum(IntentKind, 16))
    state: Mapped[IntentState] = mapped_column(_enum(IntentState, 16))
    reference: Mapped[str] = mapped_column(String(64))
    terminal_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(128))
    merchant_id: Mapped[str] = mapped_column(String(40))
    charge_id: Mapped[str] = mapped_column(String(40))
    refund_id: Mapped[str | None] = mapped_column(String(40))
    amount: Mapped[int | None]
    idempotency_record_id: Mapped[int | None]
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"PaymentIntent(intent_id={self.intent_id!r}, kind={self.kind.value!r}, state={self.state.value!r})"


class SandboxLedgerEntry(Base):
    """The sandbox processor's own record (§4.6, §4.7): one row per reference it received.

    A real acquirer keeps this on its side; the sandbox keeps it in our database so that crash
    recovery can ask it what happened, exactly as it would ask a real one.
    """

    __tablename__ = "sandbox_ledger"

    reference: Mapped[str] = mapped_column(String(64), primary_key=True)
    operation: Mapped[str] = mapped_column(String(16))  # authorize, refund, void, reverse
    target: Mapped[str | None] = mapped_column(String(64))  # the authorisation acted on
    amount: Mapped[int | None]
    approved: Mapped[bool] = mapped_column(default=True)
    response_code: Mapped[str | None] = mapped_column(String(2))
    authorization_code: Mapped[str | None] = mapped_column(String(6))
    decline_reason: Mapped[str | None] = mapped_column(String(64))
    emv_response: Mapped[str | None] = mapped_column(Text)
    undone_by: Mapped[str | None] = mapped_column(String(64))  # a void or reverse reference
    created_at: Mapped[datetime]
