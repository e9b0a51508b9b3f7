"""Cancel and reverse (PROTOCOL §4.3) and reverse-by-key (§4.4): the checks, made under the
charge's row lock in the flow's first transaction. What the processor is then asked is recorded
as an intent; the new status is stored by ``outcomes`` once it answered.

Only an approved charge with no refund, less than 24 h old, can be undone; repeating the same
call answers the same charge. Reverse-by-key answers what it cannot reverse as it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.errors import ChargeNotCancelable, IdempotencyInProgress
from viopay.payments import idempotency, intents
from viopay.payments.models import Charge, ChargeStatus, IdempotencyState, IntentKind
from viopay.payments.service import TerminalScope, get_charge

CANCEL_WINDOW = timedelta(hours=24)


def undoable(charge: Charge, *, now: datetime) -> bool:
    """Approved, never refunded, and less than 24 h old (§4.3)."""
    return (
        charge.status is ChargeStatus.approved
        and charge.amount_refunded == 0
        and now < charge.created_at + CANCEL_WINDOW
    )


@dataclass(frozen=True)
class UndoPlan:
    """``charge`` to answer as it stands (``act`` False), or to cancel/reverse (``act`` True)."""

    charge: Charge
    act: bool


async def _pending_blocks(db: AsyncSession, charge: Charge) -> None:
    pending = await intents.pending_on_charge(db, charge.charge_id)
    if pending.get(IntentKind.refund):
        raise ChargeNotCancelable("a refund of the charge is in progress")
    if pending.get(IntentKind.cancel) or pending.get(IntentKind.reverse):
        raise IdempotencyInProgress("a cancel or reverse of this charge is running")


async def plan_undo(
    db: AsyncSession, *, merchant_id: str, charge_id: str, target: ChargeStatus, now: datetime
) -> UndoPlan:
    """Cancel (target ``canceled``) or reverse (``reversed``): the same call again answers the
    same charge; anything not undoable is 409 charge_not_cancelable."""
    charge = await get_charge(db, merchant_id=merchant_id, charge_id=charge_id, lock=True)
    if charge.status is target:
        return UndoPlan(charge, act=False)
    if not undoable(charge, now=now):
        raise ChargeNotCancelable(_why_not(charge, now))
    await _pending_blocks(db, charge)
    return UndoPlan(charge, act=True)


def _why_not(charge: Charge, now: datetime) -> str:
    if charge.status is not ChargeStatus.approved:
        return f"the charge is {charge.status.value}"
    if charge.amount_refunded:
        return "the charge has refunds"
    return "the charge is more than 24 h old"


async def _as_it_stands(db: AsyncSession, charge: Charge, now: datetime) -> UndoPlan:
    if not undoable(charge, now=now):
        return UndoPlan(charge, act=False)
    await _pending_blocks(db, charge)
    return UndoPlan(charge, act=True)


async def _charge_by_key(db: AsyncSession, *, terminal_id: str, key: str) -> Charge | None:
    charge: Charge | None = await db.scalar(
        select(Charge)
        .where(Charge.terminal_id == terminal_id, Charge.idempotency_key == key)
        .order_by(Charge.created_at.desc())
        .limit(1)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return charge


async def plan_reverse_by_key(
    db: AsyncSession, *, scope: TerminalScope, key: str, now: datetime, stale_after: timedelta
) -> UndoPlan | None:
    """§4.4: the charge this terminal made with ``key``, to reverse when it can be, else to
    answer as it stands; None when the key made no charge (it is then spent for 24 h).

    A key whose charge is still running answers 409 idempotency_in_progress; once its intent
    is older than the recovery delay (``stale_after``) its request is presumed dead and the key
    is spent: recovery then reverses whatever the processor approved (§4.7)."""
    record = await idempotency.find_for_update(db, terminal_id=scope.terminal_id, key=key, now=now)
    if record is None:
        charge = await _charge_by_key(db, terminal_id=scope.terminal_id, key=key)
        if charge is not None:  # its record has expired: it is past 24 h anyway
            return await _as_it_stands(db, charge, now)
        if not await idempotency.spend(db, terminal_id=scope.terminal_id, key=key, now=now):
            raise IdempotencyInProgress("a request with that Idempotency-Key is running")
        return None
    if record.state is IdempotencyState.in_progress:
        if now - record.created_at < stale_after:
            raise IdempotencyInProgress("a request with that Idempotency-Key is running")
        record.state = IdempotencyState.spent_by_reverse  # its request died before answering
        await db.flush()
        return None
    if record.state is IdempotencyState.spent_by_reverse or record.charge_id is None:
        return None
    charge = await get_charge(
        db, merchant_id=scope.merchant_id, charge_id=record.charge_id, lock=True
    )
    return await _as_it_stands(db, charge, now)
