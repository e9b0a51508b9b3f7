"""A charge's statements on PostgreSQL, run by asyncpg itself (issue 10: the payment core).

The portable path (SQLAlchemy Core on the session) costs ~0.3 ms of CPU per statement before
asyncpg sees it, and a charge's outcome was six statements. On PostgreSQL the hot statements run
on the session's own asyncpg connection, inside the session's transaction, as:

- the terminal lookup of :mod:`viopay.payments.terminal_auth` (compiled once from its Core
  ``SELECT``);
- **claim + intent on a remembered lookup** (:data:`CLAIM_REMEMBERED`): the terminal lookup
  again, inside the statement, compared column by column with the row the process
  authenticated on (every column that decides authentication, and the key set's tally on the
  same side of its limit and of 90 %); only if it reads the same and the key set's row, locked
  first, has room for the request's envelope and the answer's, the claim and the intent as
  below with those envelopes counted, the device's ``last_seen_at`` when due, and for a key
  that holds a result, that record and a replay's envelope tally. A change made by any process
  acts on the next request; nothing to invalidate, no second round trip;
- **claim + intent**: one statement that claims the Idempotency-Key (the same ``INSERT … ON
  CONFLICT … DO UPDATE … WHERE expired`` as :func:`viopay.payments.idempotency.claim`) and
  records the charge intent with the claim's id; a key held by another request inserts nothing,
  and the caller goes on with the portable path (which finds that request's record);
- **the outcome**: one statement that closes the intent (``WHERE state = 'pending'``), inserts
  the charge, its audit events and their webhook deliveries (the outbox of
  :mod:`viopay.webhooks.outbox`) and stores the key's result — every part conditional on the
  intent having been closed by this statement. It never touches the key set (its envelopes
  were counted with the claim), so every charge statement locks the set's row before the
  key's, never after.

The rows are exactly the portable path's (one test compares them column by column); SQLite,
refunds, cancels, reversals and recovery use the portable path.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from viopay.payments.idempotency import KeyState
from viopay.payments.models import Charge, ChargeStatus, IdempotencyState, PaymentIntent

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


async def fetch_record(
    db: AsyncSession, statement: Compiled, params: dict[str, Any]
) -> asyncpg.Record | None:
    """One row (or None) of ``statement``."""
    return await (await driver(db)).fetchrow(statement.sql, *statement.args(params))


async def fetch_row(db: AsyncSession, statement: Compiled, params: dict[str, Any]) -> Any:
    """One row (or None) of ``statement``, as a record whose columns are read by name."""
    record = await fetch_record(db, statement, params)
    return None if record is None else Row(record)


class Row:
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


def _intent_values(intent: PaymentIntent) -> dict[str, Any]:
    """A new intent's values, by parameter name, in the order of ``_INTENT_VALUES`` ($1–$10)."""
    return {
        "intent_id": intent.intent_id,
        "kind": intent.kind.value,
        "state": intent.state.value,
        "reference": intent.reference,
        "terminal_id": intent.terminal_id,
        "device_id": intent.device_id,
        "merchant_id": intent.merchant_id,
        "charge_id": intent.charge_id,
        "request": _json(intent.request),
        "now": intent.created_at,
    }


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
    args = list(_intent_values(intent).values())
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


# --- claim + intent on a remembered lookup ----------------------------------------------------

# The lookup columns that decide authentication (:mod:`viopay.payments.terminal_auth`); the
# others (``envelope_count``, ``last_seen_at``, ``app_version``) change as terminals work.
STABLE_COLUMNS = (
    "terminal_retired_at",
    "merchant_id",
    "currency",
    "device_id",
    "device_terminal_id",
    "disabled",
    "key_set_id",
    "key_set_terminal_id",
    "status",
    "expires_at",
    "retires_at",
    "activated_at",
    "msk_key_id",
    "rotate_requested_at",
    "key_id",
    "key_type",
    "key_wrapped",
)
# The first parameters of every statement on a remembered lookup: the lookup's own two ($1,
# $2), then those of :func:`unchanged`.
REMEMBERED_PARAMS = (
    "key_id",
    "terminal_id",
    *(f"was_{c}" for c in STABLE_COLUMNS),
    "max_envelopes",
    "was_exhausted",
    "was_rotating",
)
_REMEMBERED_NAMES = (
    *REMEMBERED_PARAMS,
    "intent_id",
    "kind",
    "state",
    "reference",
    "device_id",
    "merchant_id",
    "charge_id",
    "request",
    "now",
    "key",
    "method",
    "path",
    "fingerprint",
    "expires_at",
    "envelopes",
    "counted",
    "touch",
    "seen_at",
    "version",
)
_P = {name: f"${i}" for i, name in enumerate(_REMEMBERED_NAMES, start=1)}


def unchanged(p: Mapping[str, str]) -> str:
    """The condition, on the terminal lookup ``l`` read inside a statement, that it reads as a
    remembered row: every column that decides authentication, and the key set's tally on the
    same side of its limit and of 90 %. ``p``: the placeholders of ``was_<column>``,
    ``max_envelopes``, ``was_exhausted`` and ``was_rotating`` (:func:`remembered_values`)."""
    same = "".join(
        f"l.{c} IS NOT DISTINCT FROM {p['was_' + c]}\n        AND " for c in STABLE_COLUMNS
    )
    return (
        f"{same}(l.envelope_count >= {p['max_envelopes']}::integer) = {p['was_exhausted']}::boolean"
        f"\n        AND (l.envelope_count * 10 >= {p['max_envelopes']}::integer * 9)"
        f" = {p['was_rotating']}::boolean"
    )


def remembered_values(lookup: asyncpg.Record, max_envelopes: int) -> dict[str, Any]:
    """The values of :func:`unchanged`'s placeholders for ``lookup``."""
    count = lookup["envelope_count"]
    return {f"was_{c}": lookup[c] for c in STABLE_COLUMNS} | {
        "max_envelopes": max_envelopes,
        "was_exhausted": count >= max_envelopes,
        "was_rotating": count * 10 >= max_envelopes * 9,
    }


CLAIM_REMEMBERED = """
WITH l AS ({lookup}),
ok AS (
    SELECT FROM l
    WHERE {unchanged}
), touched AS (
    UPDATE devices SET last_seen_at = coalesce({seen_at}::timestamptz, last_seen_at),
        app_version = {version}::varchar
    WHERE device_id = {device_id} AND {touch}::boolean AND EXISTS (SELECT FROM ok)
    RETURNING 1
), room AS (
    -- after the device's row (touched, read here first): the order of every transaction that
    -- takes both (authentication's touch, a heartbeat, an activation), so none deadlocks
    SELECT 1 FROM key_sets
    WHERE key_set_id = {was_key_set_id} AND EXISTS (SELECT FROM ok)
        AND (SELECT count(*) FROM touched) >= 0
        AND envelope_count + {counted}::integer <= {max_envelopes}::integer
    FOR UPDATE
), claim AS (
    INSERT INTO idempotency_records AS r (terminal_id, merchant_id, idempotency_key, method,
        path, fingerprint, state, status_code, result, charge_id, created_at, expires_at)
    SELECT {terminal_id}, NULL, {key}, {method}, {path}, {fingerprint}, 'in_progress', NULL,
        'null'::json, NULL, {now}::timestamptz, {expires_at}::timestamptz
    FROM room
    ON CONFLICT (terminal_id, idempotency_key) DO UPDATE SET {record_set}
    WHERE r.expires_at <= {now}::timestamptz
    RETURNING r.id
), intent AS (
    INSERT INTO payment_intents ({intent_columns})
    SELECT {intent_id}, {kind}, {state}, {reference}, {terminal_id}, {device_id}, {merchant_id},
        {charge_id}, NULL, NULL, claim.id, {request}::json, 'null'::json, NULL, NULL,
        {now}::timestamptz, NULL
    FROM claim
    RETURNING 1
), tallied AS (
    UPDATE key_sets SET envelope_count = envelope_count + {counted}::integer
    WHERE key_set_id = {was_key_set_id} AND EXISTS (SELECT FROM claim)
    RETURNING 1
), existing AS (
    SELECT r.id, r.state, r.fingerprint, r.status_code, r.result, r.charge_id, r.created_at
    FROM idempotency_records r
    WHERE EXISTS (SELECT FROM room) AND NOT EXISTS (SELECT FROM claim)
        AND r.terminal_id = {terminal_id} AND r.idempotency_key = {key}
        AND r.expires_at > {now}::timestamptz
), replayed AS (
    UPDATE key_sets SET envelope_count = envelope_count + {envelopes}::integer
        + CASE WHEN e.status_code < 400 THEN 1 ELSE 0 END
    FROM existing e
    WHERE key_sets.key_set_id = {was_key_set_id} AND e.state = 'done'
        AND e.fingerprint = {fingerprint}
    RETURNING 1
)
SELECT EXISTS (SELECT FROM ok) AS fresh, (SELECT id FROM claim) AS record_id,
    e.id, e.state, e.fingerprint, e.status_code, e.result, e.charge_id, e.created_at
FROM (SELECT) AS one LEFT JOIN existing e ON true
"""


def claim_remembered_sql(lookup: Compiled) -> str:
    """:data:`CLAIM_REMEMBERED` around ``lookup`` (the terminal lookup, whose parameters are
    ``key_id`` and ``terminal_id``, in that order)."""
    assert lookup.names == ("key_id", "terminal_id"), lookup.names
    return CLAIM_REMEMBERED.format(
        lookup=lookup.sql,
        unchanged=unchanged(_P),
        record_set=_RECORD_SET,
        intent_columns=_INTENT_COLUMNS,
        **_P,
    )


@dataclass(frozen=True)
class RememberedClaim:
    """What :func:`claim_remembered` found: ``fresh`` False, nothing written (the lookup row
    changed); else the claim's record id, or the live record that holds the key."""

    fresh: bool
    record_id: int | None
    existing: asyncpg.Record | None


async def claim_remembered(
    pool: NativePool,
    sql: str,
    *,
    lookup: asyncpg.Record,
    intent: PaymentIntent,
    max_envelopes: int,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    expires_at: datetime,
    envelopes: int,
    seen_at: datetime | None,
    version: str,
    touch: bool,
) -> RememberedClaim:
    """One autocommitted statement: if the terminal lookup still reads as ``lookup`` (every
    column that decides authentication, and the key set's tally on the same side of its
    limit and of 90 %) and the key set has room for ``envelopes`` and the answer's (its row
    locked first), claim ``key``, insert ``intent`` and count them, or, when the key is held,
    return its record and add a replay's envelopes to the tally; and touch the device. Nothing
    is written when the lookup changed; without room, nothing but the device's touch (the
    caller decides afresh, and refuses)."""
    params = remembered_values(lookup, max_envelopes)
    params.update(_intent_values(intent))
    params.update(
        key_id=lookup["key_id"],
        key=key,
        method=method,
        path=path,
        fingerprint=fingerprint,
        expires_at=expires_at,
        envelopes=envelopes,
        counted=envelopes + 1,
        touch=touch,
        seen_at=seen_at,
        version=version,
    )
    async with pool.connection() as conn:
        count_transaction()
        row = await conn.fetchrow(sql, *[params[name] for name in _REMEMBERED_NAMES])
    assert row is not None
    if row["record_id"] is not None:
        intent.idempotency_record_id = row["record_id"]
    return RememberedClaim(
        fresh=bool(row["fresh"]),
        record_id=row["record_id"],
        existing=row if row["id"] is not None else None,
    )


def key_state(row: asyncpg.Record) -> KeyState:
    """The live record :func:`claim_remembered` returned, as the idempotency module's state."""
    result = row["result"]
    return KeyState(
        record_id=row["id"],
        state=IdempotencyState(row["state"]),
        fingerprint=row["fingerprint"],
        status_code=row["status_code"],
        result=None if result is None else orjson.loads(result),
        charge_id=row["charge_id"],
        created_at=row["created_at"],
    )


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
_RECORD, _APPROVED = (_FIRST + len(_CHARGE_COLUMNS) + i for i in range(2))
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
