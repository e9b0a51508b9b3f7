"""A charge's statements on PostgreSQL, run by asyncpg itself (issue 10: the payment core).

The portable path (SQLAlchemy Core on the session) costs ~0.3 ms of CPU per statement before
asyncpg sees it, and a charge's outcome was six statements. On PostgreSQL the hot statements run
on the session's own asyncpg connection, inside the session's transaction, as:

- the terminal lookup of :mod:`viopay.payments.terminal_auth` (compiled once from its Core
  ``SELECT``);
- **claim + intent**: one statement that claims the Idempotency-Key (the same ``INSERT … ON
  CONFLICT … DO UPDATE … WHERE expired`` as :func:`viopay.payments.idempotency.claim`) and
  records the charge intent with the claim's id; a key held by another request inserts nothing,
  and the caller goes on with the portable path (which finds that request's record);
- **the outcome**: one statement that closes the intent (``WHERE state = 'pending'``), inserts
  the charge, its audit events and their webhook deliveries (the outbox of
  :mod:`viopay.webhooks.outbox`), stores the key's result and adds to the key set's envelope
  tally — every part conditional on the intent having been closed by this statement.

The rows are exactly the portable path's (one test compares them column by column); SQLite,
refunds, cancels, reversals and recovery use the portable path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg
import orjson
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from viopay.audit import Actor
from viopay.db import NativePool
from viopay.ids import new_id
from viopay.metrics import count_transaction
from viopay.payments.models import Charge, ChargeStatus, PaymentIntent

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


def on_postgres(db: AsyncSession) -> bool:
    return db.get_bind().dialect.name == "postgresql"


async def driver(db: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session, in the session's transaction.

    SQLAlchemy's asyncpg adapter sends BEGIN only before its own first statement; a statement
    sent straight to asyncpg before that would run in a transaction of its own (and survive
    the session's rollback). So the adapter's transaction is started here when it has not
    been (``tests/payments/test_native_transaction.py`` holds this to the adapter's version).
    """
    connection = await db.connection()
    raw = await connection.get_raw_connection()
    adapter: Any = raw.dbapi_connection
    if adapter._transaction is None:
        await adapter._start_transaction()
    return raw.driver_connection  # type: ignore[return-value]


def _json(value: Any) -> str:
    """What SQLAlchemy's JSON type sends (asyncpg takes json as text here): ``None`` → null."""
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Compiled:
    """A Core statement compiled once for asyncpg: its SQL and the order of its parameters."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, statement: ClauseElement) -> Compiled:
        compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT))
        return cls(str(compiled), tuple(compiled.positiontup or ()))

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


async def fetch_row(db: AsyncSession, statement: Compiled, params: dict[str, Any]) -> Any:
    """One row (or None) of ``statement``, as a record whose columns are read by name."""
    record = await (await driver(db)).fetchrow(statement.sql, *statement.args(params))
    return None if record is None else _Row(record)


class _Row:
    """An asyncpg record read by attribute, as a SQLAlchemy row is."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]


# --- claim + intent ---------------------------------------------------------------------------

_INTENT_COLUMNS = (
    "intent_id, kind, state, reference, terminal_id, device_id, merchant_id, charge_id, "
    "refund_id, amount, idempotency_record_id, request, outcome, lease_owner, lease_until, "
    "created_at, finished_at"
)
_INTENT_VALUES = (
    "$1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, {record}, $9::json, 'null'::json, NULL, NULL, "
    "$10::timestamptz, NULL"
)
_RECORD_SET = ", ".join(
    f"{c} = excluded.{c}"
    for c in (
        "merchant_id",
        "method",
        "path",
        "fingerprint",
        "state",
        "status_code",
        "result",
        "charge_id",
        "created_at",
        "expires_at",
    )
)
CLAIM_AND_RECORD = f"""
WITH claim AS (
    INSERT INTO idempotency_records AS r (terminal_id, merchant_id, idempotency_key, method,
        path, fingerprint, state, status_code, result, charge_id, created_at, expires_at)
    VALUES ($5, NULL, $11, $12, $13, $14, 'in_progress', NULL, 'null'::json, NULL,
        $10::timestamptz, $15::timestamptz)
    ON CONFLICT (terminal_id, idempotency_key) DO UPDATE SET {_RECORD_SET}
    WHERE r.expires_at <= $10::timestamptz
    RETURNING r.id
)
INSERT INTO payment_intents ({_INTENT_COLUMNS})
SELECT {_INTENT_VALUES.format(record="claim.id")} FROM claim
RETURNING idempotency_record_id
"""  # noqa: S608 (built from this module's constants only)
RECORD_UNKEYED = f"""
INSERT INTO payment_intents ({_INTENT_COLUMNS})
VALUES ({_INTENT_VALUES.format(record="NULL")})
"""  # noqa: S608 (built from this module's constants only)


async def claim_and_record(
    db: AsyncSession,
    intent: PaymentIntent,
    *,
    key: str | None,
    method: str,
    path: str,
    fingerprint: str,
    expires_at: datetime,
) -> bool:
    """Claim ``key`` and insert ``intent`` (its ``idempotency_record_id`` set from the claim)
    in one statement; False, having changed nothing, when the key is another request's."""
    conn = await driver(db)
    args = [
        intent.intent_id,
        intent.kind.value,
        intent.state.value,
        intent.reference,
        intent.terminal_id,
        intent.device_id,
        intent.merchant_id,
        intent.charge_id,
        _json(intent.request),
        intent.created_at,
    ]
    if key is None:
        await conn.execute(RECORD_UNKEYED, *args)
        return True
    record_id = await conn.fetchval(
        CLAIM_AND_RECORD, *args, key, method, path, fingerprint, expires_at
    )
    if record_id is None:
        return False
    intent.idempotency_record_id = record_id
    return True


# --- the outcome ------------------------------------------------------------------------------

_CHARGE_COLUMNS = (
    "charge_id",
    "terminal_id",
    "merchant_id",
    "device_id",
    "status",
    "amount",
    "tip_amount",
    "tax_amount",
    "surcharge_amount",
    "amount_refunded",
    "currency",
    "reference",
    "entry_mode",
    "card_brand",
    "card_bin",
    "card_last4",
    "card_expiry",
    "authorization_code",
    "response_code",
    "decline_reason",
    "emv_response",
    "processor_reference",
    "request_nonce",
    "idempotency_key",
    "created_at",
    "updated_at",
)
_CASTS = {
    "amount": "::integer",
    "tip_amount": "::integer",
    "tax_amount": "::integer",
    "surcharge_amount": "::integer",
    "amount_refunded": "::integer",
    "created_at": "::timestamptz",
    "updated_at": "::timestamptz",
}
_FIRST = 11  # the charge's columns are $11 onwards
_RECORD, _ENVELOPES, _KEY_SET, _APPROVED = (_FIRST + len(_CHARGE_COLUMNS) + i for i in range(4))
KEY_SPENT = "the key was spent by a reverse-by-key"
_CHARGE_VALUES = ", ".join(
    f"${_FIRST + i}{_CASTS.get(c, '::varchar')}" for i, c in enumerate(_CHARGE_COLUMNS)
)
STORE_CHARGE = f"""
WITH closed AS (
    UPDATE payment_intents SET state = 'done', outcome = $1::json,
        finished_at = $2::timestamptz
    WHERE intent_id = $3 AND state = 'pending'
    RETURNING intent_id
), charge AS (
    INSERT INTO charges ({", ".join(_CHARGE_COLUMNS)})
    SELECT {_CHARGE_VALUES} FROM closed
    RETURNING charge_id
), events AS (
    INSERT INTO audit_events (event_id, merchant_id, type, actor_type, actor_id, subject_type,
        subject_id, data, created_at)
    SELECT e.event_id, ${_FIRST + 2}::varchar, e.type, $4::varchar, $5::varchar, 'charge',
        ${_FIRST}::varchar, e.data, $2::timestamptz
    FROM closed CROSS JOIN unnest($6::varchar[], $7::varchar[], $8::json[]) AS e(event_id, type, data)
    RETURNING event_id, type
), deliveries AS (
    INSERT INTO webhook_deliveries (delivery_id, endpoint_id, merchant_id, event_id, event_type,
        status, attempts, schedule_step, next_attempt_at, created_at)
    SELECT 'whd_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20), w.endpoint_id,
        w.merchant_id, e.event_id, e.type, 'pending', 0, 0, $2::timestamptz, $2::timestamptz
    FROM events e JOIN webhook_endpoints w
        ON w.merchant_id = ${_FIRST + 2}::varchar AND w.status = 'enabled'
    WHERE w.event_types IS NULL OR json_typeof(w.event_types) = 'null'
        OR w.event_types::jsonb ? e.type
    RETURNING 1
), finished AS (
    UPDATE idempotency_records SET state = 'done', status_code = $9::integer,
        result = $10::json, charge_id = ${_FIRST}::varchar
    WHERE id = ${_RECORD}::integer AND state = 'in_progress'
        AND EXISTS (SELECT FROM closed)
    RETURNING id
), metered AS (
    UPDATE key_sets SET envelope_count = envelope_count + ${_ENVELOPES}::integer
    WHERE key_set_id = ${_KEY_SET}::varchar
        AND EXISTS (SELECT FROM closed)
    RETURNING 1
)
SELECT (SELECT count(*) FROM closed) AS closed, (SELECT count(*) FROM deliveries) AS deliveries,
    CASE WHEN ${_APPROVED}::boolean AND ${_RECORD}::integer IS NOT NULL
            AND EXISTS (SELECT FROM closed) AND NOT EXISTS (SELECT FROM finished)
        THEN viopay_raise('{KEY_SPENT}') END AS refused
"""  # noqa: S608 (built from this module's constants only)


@dataclass(frozen=True)
class ChargeEvent:
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredCharge:
    closed: bool  # False: the intent was no longer pending; nothing changed
    key_spent: bool  # True: an approval whose key was spent meanwhile; nothing changed
    deliveries: int


async def store_charge(
    pool: NativePool,
    intent: PaymentIntent,
    charge: Charge,
    *,
    outcome: dict[str, Any],
    events: list[ChargeEvent],
    actor: Actor,
    stored_status: int,
    view: dict[str, Any],
    key_set_id: str,
    envelopes: int,
    now: datetime,
) -> StoredCharge:
    """The outcome statement (see the module's docstring), autocommitted: it is the whole
    transaction. An approval whose key a reverse-by-key spent meanwhile is undone whole
    (``viopay_raise``, migration 0012) and reported as ``key_spent``."""
    args = [
        _json(outcome),
        now,
        intent.intent_id,
        actor.type,
        actor.id,
        [new_id("evt_") for _ in events],
        [e.type for e in events],
        [_json(e.data) for e in events],
        stored_status,
        _json(view),
        *[_column(charge, c) for c in _CHARGE_COLUMNS],
        intent.idempotency_record_id,
        envelopes,
        key_set_id,
        charge.status is ChargeStatus.approved,
    ]
    async with pool.connection() as conn:
        count_transaction()
        try:
            row = await conn.fetchrow(STORE_CHARGE, *args)
        except asyncpg.RaiseError as exc:
            if exc.sqlstate != "VP001":
                raise
            return StoredCharge(closed=True, key_spent=True, deliveries=0)
    assert row is not None
    return StoredCharge(
        closed=bool(row["closed"]), key_spent=False, deliveries=int(row["deliveries"])
    )


def _column(charge: Charge, name: str) -> Any:
    value = getattr(charge, name)
    return value.value if hasattr(value, "value") else value
