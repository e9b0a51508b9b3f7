"""The statements :mod:`viopay.payments.native` sends to asyncpg itself run in the session's
transaction: rolled back with it, and committed as one transaction with the session's own
statements (SQLAlchemy's asyncpg adapter starts its transaction lazily; ``native.driver``
starts it first)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from support.helpers import Backend
from viopay.payments import intents, native
from viopay.payments.models import IntentKind, PaymentIntent
from viopay.runtime import Runtime


def _intent(now: datetime) -> PaymentIntent:
    return intents.build(
        kind=IntentKind.charge,
        terminal_id="TID-NATIVE",
        device_id="POS-NATIVE",
        merchant_id="mer_native",
        charge_id="ch_native_" + intents.new_reference()[-8:],
        now=now,
        request={"amount": 100},
        idempotency_record_id=None,
    )


async def _count(runtime: Runtime, intent_id: str) -> int:
    async with runtime.sessions() as db:
        found = await db.scalar(
            select(func.count())
            .select_from(PaymentIntent)
            .where(PaymentIntent.intent_id == intent_id)
        )
    return int(found or 0)


async def _transaction_ids(runtime: Runtime) -> tuple[int, int]:
    """The transaction id seen by a statement sent to asyncpg directly (first) and by the
    session's own next statement."""
    async with runtime.sessions() as db, db.begin():
        conn = await native.driver(db)
        raw_xid = await conn.fetchval("SELECT txid_current()")
        orm_xid = await db.scalar(select(func.txid_current()))
        return int(raw_xid), int(orm_xid or 0)


@pytest.mark.parametrize("first", ["native", "orm"])
async def test_a_native_statement_rolls_back_with_its_session(
    backend: Backend, runtime: Runtime, first: str
) -> None:
    if backend.name != "postgres":
        assert not native.on_postgres(runtime.sessions())  # the portable path: nothing to hold
        return
    intent = _intent(datetime.now(UTC))

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with runtime.sessions() as db, db.begin():
            if first == "orm":
                await db.execute(select(1))
            assert await native.claim_and_record(
                db,
                intent,
                key=None,
                method="POST",
                path="/pos/charge",
                fingerprint="",
                expires_at=intent.created_at,
            )
            raise Abort
    assert await _count(runtime, intent.intent_id) == 0


async def test_native_and_orm_statements_share_one_transaction(
    backend: Backend, runtime: Runtime
) -> None:
    if backend.name != "postgres":
        assert not native.on_postgres(runtime.sessions())
        return
    raw_xid, orm_xid = await _transaction_ids(runtime)
    assert raw_xid == orm_xid
