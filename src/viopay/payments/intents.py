"""Payment intents (PROTOCOL §4.7): what the server is about to ask the processor, recorded in
the transaction that claims the Idempotency-Key, before the call is made.

An intent is ``pending`` until one later transaction stores its outcome and marks it ``done``
or ``abandoned``; that mark is a conditional UPDATE (``WHERE state = 'pending'``), so of the
live request and recovery, exactly one stores an outcome. Recovery takes a due intent with a
lease (another conditional UPDATE), so two processes never handle the same one.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.db import Base, unsaved
from viopay.ids import new_id
from viopay.payments.models import IntentKind, IntentState, PaymentIntent
from viopay.payments.processors import ChargeRef

LEASE = timedelta(seconds=60)


def new_reference() -> str:
    """The reference the processor keeps for one call: random, unique, ours."""
    return "vpr_" + secrets.token_hex(12)


async def record(db: AsyncSession, **fields: Any) -> PaymentIntent:
    """Build (:func:`build`) and insert a pending intent."""
    intent = build(**fields)
    await insert_row(db, intent)
    return intent


def build(
    *,
    kind: IntentKind,
    terminal_id: str,
    device_id: str,
    merchant_id: str,
    charge_id: str,
    now: datetime,
    request: dict[str, Any],
    idempotency_record_id: int | None,
    refund_id: str | None = None,
    amount: int | None = None,
) -> PaymentIntent:
    """A new pending intent under a fresh reference (not yet written)."""
    return unsaved(
        PaymentIntent,
        intent_id=new_id("pi_"),
        kind=kind,
        state=IntentState.pending,
        reference=new_reference(),
        terminal_id=terminal_id,
        device_id=device_id,
        merchant_id=merchant_id,
        charge_id=charge_id,
        refund_id=refund_id,
        amount=amount,
        idempotency_record_id=idempotency_record_id,
        request=request,
        outcome=None,
        lease_owner=None,
        lease_until=None,
        created_at=now,
        finished_at=None,
    )


_INSERTS: dict[str, Any] = {}


async def insert_row(db: AsyncSession, row: Base) -> None:
    """INSERT one new row with Core (no unit of work on the hot path); ``row`` stays a plain
    transient object the caller keeps reading."""
    table = cast(Table, row.__table__)
    statement = _INSERTS.get(table.name)
    if statement is None:  # one statement per table, compiled once, executed with parameters
        statement = _INSERTS[table.name] = insert(table)
    await db.execute(statement, {c.key: getattr(row, c.key) for c in table.columns})


async def close(
    db: AsyncSession,
    intent_id: str,
    *,
    state: IntentState,
    outcome: dict[str, Any],
    now: datetime,
    lease_owner: str | None = None,
) -> bool:
    """Mark a pending intent finished; False when it no longer is pending (the other of the
    live request and recovery got there first) or, with ``lease_owner``, no longer ours."""
    query = _CLOSE if lease_owner is None else _CLOSE_LEASED
    params = {"intent": intent_id, "new_state": state, "new_outcome": outcome, "at": now}
    if lease_owner is not None:
        params["owner"] = lease_owner
    done = await db.execute(query, params)
    return bool(getattr(done, "rowcount", 0))


# Core statements on the table, built once (no ORM bulk-update machinery on the hot path).
_INTENTS = cast(Table, PaymentIntent.__table__)
_CLOSE = (
    update(_INTENTS)
    .where(
        _INTENTS.c.intent_id == bindparam("intent"),
        _INTENTS.c.state == IntentState.pending,
    )
    .values(
        state=bindparam("new_state"),
        outcome=bindparam("new_outcome"),
        finished_at=bindparam("at"),
    )
)
_CLOSE_LEASED = _CLOSE.where(_INTENTS.c.lease_owner == bindparam("owner"))


async def pending_on_charge(db: AsyncSession, charge_id: str) -> dict[IntentKind, int]:
    """Pending intents acting on a charge: count per kind, and the refund amount under
    ``IntentKind.refund`` (the caller holds the charge's row lock)."""
    rows = (
        await db.execute(
            select(
                PaymentIntent.kind, func.count(), func.coalesce(func.sum(PaymentIntent.amount), 0)
            )
            .where(
                PaymentIntent.charge_id == charge_id,
                PaymentIntent.state == IntentState.pending,
                PaymentIntent.kind != IntentKind.charge,
            )
            .group_by(PaymentIntent.kind)
        )
    ).all()
    found: dict[IntentKind, int] = {}
    for kind, count, amount in rows:
        found[IntentKind(kind)] = (
            int(amount or 0) if IntentKind(kind) is IntentKind.refund else int(count)
        )
    return found


async def due(db: AsyncSession, *, now: datetime, delay: timedelta, limit: int) -> list[str]:
    """Ids of pending intents older than ``delay`` whose lease is free, oldest first."""
    rows = await db.scalars(
        select(PaymentIntent.intent_id)
        .where(
            PaymentIntent.state == IntentState.pending,
            PaymentIntent.created_at <= now - delay,
            or_(PaymentIntent.lease_until.is_(None), PaymentIntent.lease_until < now),
        )
        .order_by(PaymentIntent.created_at)
        .limit(limit)
    )
    return list(rows)


async def count_due(db: AsyncSession, *, now: datetime, delay: timedelta) -> int:
    """How many pending intents are older than ``delay`` (the recovery backlog)."""
    total = await db.scalar(
        select(func.count())
        .select_from(PaymentIntent)
        .where(PaymentIntent.state == IntentState.pending, PaymentIntent.created_at <= now - delay)
    )
    return int(total or 0)


async def take(db: AsyncSession, intent_id: str, *, owner: str, now: datetime) -> bool:
    """Lease one due intent to ``owner``; False when another process holds it or it is done."""
    taken = await db.execute(
        update(PaymentIntent)
        .where(
            PaymentIntent.intent_id == intent_id,
            PaymentIntent.state == IntentState.pending,
            or_(PaymentIntent.lease_until.is_(None), PaymentIntent.lease_until < now),
        )
        .values(lease_owner=owner, lease_until=now + LEASE)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(taken, "rowcount", 0))


def authorization_ref(intent: PaymentIntent) -> ChargeRef:
    """The authorisation an intent acts on, as the processor knows it: a charge intent's own
    reference, or the charge's for a refund, cancel or reverse (kept in ``request``)."""
    request = intent.request
    if intent.kind is IntentKind.charge:
        return ChargeRef(
            intent.charge_id,
            intent.terminal_id,
            int(request["amount"]),
            str(request["currency"]),
            intent.reference,
        )
    return ChargeRef(
        intent.charge_id,
        intent.terminal_id,
        int(request["charge_amount"]),
        str(request["currency"]),
        request.get("processor_reference"),
    )
