"""Refunds (PROTOCOL §4.2): never more than the charge, also under concurrent refunds.

The charge is read under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers) before anything is checked, and stays locked through the processor call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import record_event
from viopay.deps import validate
from viopay.errors import ChargeNotRefundable, RefundExceedsCharge
from viopay.ids import new_id
from viopay.payments.models import Charge, ChargeStatus, Refund
from viopay.payments.processors import Processor
from viopay.payments.schemas import RefundIn
from viopay.payments.service import TerminalScope, charge_event, charge_ref, get_charge

REFUNDABLE = frozenset({ChargeStatus.approved, ChargeStatus.partially_refunded})


async def refunds_of(db: AsyncSession, charge_id: str) -> list[Refund]:
    rows = await db.scalars(
        select(Refund)
        .where(Refund.charge_id == charge_id)
        .order_by(Refund.created_at, Refund.refund_id)
    )
    return list(rows)


async def refund_charge(
    db: AsyncSession,
    *,
    processor: Processor,
    scope: TerminalScope,
    charge_id: str,
    plaintext: dict[str, Any],
    nonce: str,
    idempotency_key: str | None,
    now: datetime,
) -> tuple[Refund, Charge]:
    """§4.2, in order: 404 → 409 charge_not_refundable → 400 → 422 refund_exceeds_charge."""
    charge = await get_charge(db, merchant_id=scope.merchant_id, charge_id=charge_id, lock=True)
    if charge.status not in REFUNDABLE:
        raise ChargeNotRefundable(f"the charge is {charge.status.value}")
    body = validate(RefundIn, plaintext)
    left = charge.amount - charge.amount_refunded
    amount = left if body.amount is None else body.amount
    if amount > left:
        raise RefundExceedsCharge(f"at most {left} is left to refund")
    refund_id = new_id("re_")
    reference = await processor.refund(charge_ref(charge), refund_id=refund_id, amount=amount)
    refund = Refund(
        refund_id=refund_id,
        charge_id=charge.charge_id,
        merchant_id=charge.merchant_id,
        terminal_id=scope.terminal_id,
        amount=amount,
        reason=body.reason,
        status="succeeded",
        processor_reference=reference,
        request_nonce=nonce,
        idempotency_key=idempotency_key,
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
    record_event(
        db,
        type="refund.created",
        actor=scope.actor,
        subject_type="refund",
        subject_id=refund_id,
        merchant_id=charge.merchant_id,
        now=now,
        data={"charge_id": charge.charge_id, "terminal_id": scope.terminal_id, "amount": amount},
    )
    charge_event(
        db,
        "charge.refunded",
        charge,
        scope.actor,
        now,
        refund_id=refund_id,
        amount=amount,
        amount_refunded=charge.amount_refunded,
        status=charge.status.value,
    )
    await db.flush()
    return refund, charge
