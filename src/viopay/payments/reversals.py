"""Cancel and reverse (PROTOCOL §4.3) and reverse-by-key (§4.4).

Only an approved charge with no refund, less than 24 h old, can be undone; repeating the same
call answers the same charge. Reverse-by-key answers what it cannot reverse as it stands.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.errors import ChargeNotCancelable, IdempotencyInProgress
from viopay.payments import idempotency
from viopay.payments.models import Charge, ChargeStatus, IdempotencyState
from viopay.payments.processors import Processor
from viopay.payments.service import TerminalScope, charge_event, charge_ref, get_charge

CANCEL_WINDOW = timedelta(hours=24)


def undoable(charge: Charge, *, now: datetime) -> bool:
    """Approved, never refunded, and less than 24 h old (§4.3)."""
    return (
        charge.status is ChargeStatus.approved
        and charge.amount_refunded == 0
        and now < charge.created_at + CANCEL_WINDOW
    )


async def cancel_charge(
    db: AsyncSession, *, processor: Processor, scope: TerminalScope, charge_id: str, now: datetime
) -> Charge:
    charge = await get_charge(db, merchant_id=scope.merchant_id, charge_id=charge_id, lock=True)
    return await _undo(db, processor, charge, ChargeStatus.canceled, scope.actor, now)


async def reverse_charge(
    db: AsyncSession, *, processor: Processor, scope: TerminalScope, charge_id: str, now: datetime
) -> Charge:
    charge = await get_charge(db, merchant_id=scope.merchant_id, charge_id=charge_id, lock=True)
    return await _undo(db, processor, charge, ChargeStatus.reversed, scope.actor, now)


async def _undo(
    db: AsyncSession,
    processor: Processor,
    charge: Charge,
    target: ChargeStatus,
    actor: Actor,
    now: datetime,
) -> Charge:
    """Cancel or reverse a locked charge; the same call again answers the same charge."""
    if charge.status is target:
        return charge
    if not undoable(charge, now=now):
        raise ChargeNotCancelable(_why_not(charge, now))
    await _apply_undo(db, processor, charge, target, actor, now)
    return charge


async def _apply_undo(
    db: AsyncSession,
    processor: Processor,
    charge: Charge,
    target: ChargeStatus,
    actor: Actor,
    now: datetime,
) -> None:
    if target is ChargeStatus.canceled:
        await processor.void(charge_ref(charge))
    else:
        await processor.reverse(charge_ref(charge))
    charge.status, charge.updated_at = target, now
    charge_event(db, f"charge.{target.value}", charge, actor, now)
    await db.flush()


def _why_not(charge: Charge, now: datetime) -> str:
    if charge.status is not ChargeStatus.approved:
        return f"the charge is {charge.status.value}"
    if charge.amount_refunded:
        return "the charge has refunds"
    return "the charge is more than 24 h old"


async def reverse_as_it_stands(
    db: AsyncSession, *, processor: Processor, charge: Charge, actor: Actor, now: datetime
) -> Charge:
    """Reverse-by-key (§4.4): reverse when possible, else answer the charge unchanged."""
    if undoable(charge, now=now):
        await _apply_undo(db, processor, charge, ChargeStatus.reversed, actor, now)
    return charge


# --- reverse by key ---------------------------------------------------------------------------


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


async def reverse_by_key(
    db: AsyncSession, *, processor: Processor, scope: TerminalScope, key: str, now: datetime
) -> Charge | None:
    """§4.4: the charge this terminal made with ``key``, reversed when it can be, else as it
    stands; None when the key made no charge (it is then spent for 24 h)."""
    record = await idempotency.find_for_update(db, terminal_id=scope.terminal_id, key=key, now=now)
    if record is None:
        charge = await _charge_by_key(db, terminal_id=scope.terminal_id, key=key)
        if charge is not None:  # its record has expired: it is past 24 h anyway
            return await reverse_as_it_stands(
                db, processor=processor, charge=charge, actor=scope.actor, now=now
            )
        try:
            await idempotency.spend(db, terminal_id=scope.terminal_id, key=key, now=now)
        except IntegrityError:  # a charge with that key claimed it this very moment
            raise IdempotencyInProgress("a request with that Idempotency-Key is running") from None
        return None
    if record.state is IdempotencyState.in_progress:
        if now - record.created_at < idempotency.STALE_AFTER:
            raise IdempotencyInProgress("a request with that Idempotency-Key is running")
        record.state = IdempotencyState.spent_by_reverse  # its request died before answering
        await db.flush()
        return None
    if record.state is IdempotencyState.spent_by_reverse or record.charge_id is None:
        return None
    charge = await get_charge(
        db, merchant_id=scope.merchant_id, charge_id=record.charge_id, lock=True
    )
    return await reverse_as_it_stands(
        db, processor=processor, charge=charge, actor=scope.actor, now=now
    )
