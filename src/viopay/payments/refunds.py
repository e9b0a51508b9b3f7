"""Refunds (PROTOCOL §4.2): never more than the charge, also under concurrent refunds.

The charge is read under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers) before anything is checked; the refund is then recorded as an intent and the lock
released before the processor call (§4.7). The refund itself is stored by ``outcomes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.deps import validate
from viopay.errors import ChargeNotRefundable, RefundExceedsCharge
from viopay.payments import intents
from viopay.payments.models import Charge, ChargeStatus, IntentKind, Refund
from viopay.payments.schemas import RefundIn
from viopay.payments.service import TerminalScope, get_charge

REFUNDABLE = frozenset({ChargeStatus.approved, ChargeStatus.partially_refunded})


async def refunds_of(db: AsyncSession, charge_id: str) -> list[Refund]:
    rows = await db.scalars(
        select(Refund)
        .where(Refund.charge_id == charge_id)
        .order_by(Refund.created_at, Refund.refund_id)
    )
    return list(rows)


@dataclass(frozen=True)
class RefundPlan:
    """A refund that passed every check, to be recorded as an intent."""

    charge: Charge
    amount: int
    reason: str | None


async def plan_refund(
    db: AsyncSession, *, scope: TerminalScope, charge_id: str, plaintext: dict[str, Any]
) -> RefundPlan:
    """§4.2, in order: 404 → 409 charge_not_refundable → 400 → 422 refund_exceeds_charge.

    The charge is read under its row lock, and refunds still at the processor (pending
    intents) count as made: the sum of refunds never exceeds the charge, also under
    concurrent refunds on any number of servers."""
    charge = await get_charge(db, merchant_id=scope.merchant_id, charge_id=charge_id, lock=True)
    if charge.status not in REFUNDABLE:
        raise ChargeNotRefundable(f"the charge is {charge.status.value}")
    pending = await intents.pending_on_charge(db, charge.charge_id)
    if pending.get(IntentKind.cancel) or pending.get(IntentKind.reverse):
        raise ChargeNotRefundable("a cancel or reverse of the charge is in progress")
    body = validate(RefundIn, plaintext)
    amount = refund_amount(
        charged=charge.amount,
        refunded=charge.amount_refunded,
        pending=pending.get(IntentKind.refund, 0),
        requested=body.amount,
    )
    return RefundPlan(charge, amount, body.reason)


def refund_amount(*, charged: int, refunded: int, pending: int, requested: int | None) -> int:
    """What a refund takes: ``requested``, or all that is left (refunds still at the processor
    count as made); RefundExceedsCharge when that is more than is left, or nothing is."""
    left = charged - refunded - pending
    amount = left if requested is None else requested
    if amount > left or amount < 1:
        raise RefundExceedsCharge(f"at most {max(left, 0)} is left to refund")
    return amount
