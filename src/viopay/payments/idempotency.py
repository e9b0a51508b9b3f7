"""Idempotency-Key (PROTOCOL §4.5): fingerprints, claims, stored results, spent keys.

A key is claimed by inserting an ``in_progress`` record in the flow's first transaction, with
the payment intent (§4.7), before any processor call: the unique ``(terminal_id,
idempotency_key)`` constraint lets exactly one request of any number, on any number of server
processes, go on. The outcome transaction stores its result (or releases the key, for results
that are not stored); a request that died is finished by recovery.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.crypto.canonical import canonical_json
from viopay.db import insert_for
from viopay.errors import IdempotencyInProgress, InvalidRequest, InvalidState
from viopay.payments.models import IdempotencyRecord, IdempotencyState

RETENTION = timedelta(hours=24)
FINGERPRINT_PURPOSE = "idempotency-fingerprint"


def fingerprint(
    key: bytes, *, method: str, path: str, plaintext: dict[str, Any], card: dict[str, Any] | None
) -> str:
    """HMAC-SHA256 of ``METHOD\\nPATH\\n`` + canonical JSON of the plaintext, ``card`` replaced
    by its decrypted object and ``pin_block`` left out; hex."""
    view = {name: value for name, value in plaintext.items() if name != "pin_block"}
    if card is not None:
        view["card"] = card
    try:
        body = canonical_json(view)
    except ValueError:
        raise InvalidRequest("the body holds a value JSON cannot carry exactly") from None
    message = f"{method.upper()}\n{path}\n".encode() + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class KeyState:
    """A snapshot of a live record (no ORM object leaves its session)."""

    record_id: int
    state: IdempotencyState
    fingerprint: str | None
    status_code: int | None
    result: dict[str, Any] | None
    charge_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, record: IdempotencyRecord) -> KeyState:
        return cls(
            record_id=record.id,
            state=record.state,
            fingerprint=record.fingerprint,
            status_code=record.status_code,
            result=record.result,
            charge_id=record.charge_id,
            created_at=record.created_at,
        )


def refuse_busy(state: KeyState) -> None:
    """§4.5 precedence, first half: spent by a reverse → 409 invalid_state; running → 409."""
    if state.state is IdempotencyState.spent_by_reverse:
        raise InvalidState("the Idempotency-Key was spent by a reverse-by-key")
    if state.state is IdempotencyState.in_progress:
        raise IdempotencyInProgress()


def _scope(terminal_id: str | None, merchant_id: str | None) -> tuple[str, str]:
    """A key's scope (§4.5, §6): ``("terminal_id", TID)`` or ``("merchant_id", mer_…)``."""
    if terminal_id is not None and merchant_id is None:
        return "terminal_id", terminal_id
    if merchant_id is not None and terminal_id is None:
        return "merchant_id", merchant_id
    raise ValueError("an Idempotency-Key belongs to a terminal or to a merchant")


def _live(terminal_id: str | None, key: str, now: datetime, merchant_id: str | None = None) -> Any:
    column, owner = _scope(terminal_id, merchant_id)
    return select(IdempotencyRecord).where(
        getattr(IdempotencyRecord, column) == owner,
        IdempotencyRecord.idempotency_key == key,
        IdempotencyRecord.expires_at > now,
    )


async def find(
    db: AsyncSession,
    *,
    terminal_id: str | None = None,
    merchant_id: str | None = None,
    key: str,
    now: datetime,
) -> KeyState | None:
    record: IdempotencyRecord | None = await db.scalar(
        _live(terminal_id, key, now, merchant_id=merchant_id)
    )
    return None if record is None else KeyState.of(record)


async def find_for_update(
    db: AsyncSession, *, terminal_id: str, key: str, now: datetime
) -> IdempotencyRecord | None:
    record: IdempotencyRecord | None = await db.scalar(
        _live(terminal_id, key, now).with_for_update().execution_options(populate_existing=True)
    )
    return record


_RECORDS = cast(Table, IdempotencyRecord.__table__)
_COLUMNS = [c.key for c in _RECORDS.columns if c.key != "id"]
_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str, scope: str) -> Any:
    """INSERT … ON CONFLICT (<scope>, key) DO UPDATE SET <every column> WHERE the record
    there has expired, RETURNING id — built once per dialect and scope and executed with
    parameters, so SQLAlchemy compiles it once (no per-request statement construction on the
    hot path)."""
    statement = _UPSERTS.get(f"{dialect}:{scope}")
    if statement is None:
        base = insert_for(dialect)(_RECORDS)
        statement = base.on_conflict_do_update(
            index_elements=[scope, "idempotency_key"],
            set_={
                name: base.excluded[name]
                for name in _COLUMNS
                if name not in (scope, "idempotency_key")
            },
            where=_RECORDS.c.expires_at <= bindparam("expired_before"),
        ).returning(_RECORDS.c.id)
        _UPSERTS[f"{dialect}:{scope}"] = statement
    return statement


async def _insert_if_free(db: AsyncSession, values: dict[str, Any], *, now: datetime) -> int | None:
    """One statement (:func:`_upsert`): the unique constraint decides between concurrent
    requests on any server (on PostgreSQL the loser waits for the winner's commit); an expired
    record is replaced in place; a live one returns nothing."""
    values = {"terminal_id": None, "merchant_id": None, **values}
    scope, _ = _scope(values["terminal_id"], values["merchant_id"])
    statement = _upsert(db.get_bind().dialect.name, scope)
    inserted: int | None = (await db.execute(statement, {**values, "expired_before": now})).scalar()
    return inserted


async def claim(
    db: AsyncSession,
    *,
    terminal_id: str | None = None,
    merchant_id: str | None = None,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    now: datetime,
    result: tuple[int, dict[str, Any]] | None = None,
) -> KeyState | int:
    """Claim ``key`` of a terminal (or, for the merchant API, of a merchant) in the caller's
    transaction: the new record's id, or the live record of the request that claimed it first.
    With ``result`` the record is stored finished at once (a 4xx decided before any work)."""
    values = {
        "terminal_id": terminal_id,
        "merchant_id": merchant_id,
        "idempotency_key": key,
        "method": method,
        "path": path,
        "fingerprint": fingerprint,
        "state": IdempotencyState.in_progress if result is None else IdempotencyState.done,
        "status_code": None if result is None else result[0],
        "result": None if result is None else result[1],
        "charge_id": None,
        "created_at": now,
        "expires_at": now + RETENTION,
    }
    record_id = await _insert_if_free(db, values, now=now)
    if record_id is not None:
        return record_id
    state = await find(db, terminal_id=terminal_id, merchant_id=merchant_id, key=key, now=now)
    if state is None:  # released between the two statements: still someone else's turn
        raise IdempotencyInProgress()
    return state


async def finish(
    db: AsyncSession,
    *,
    record_id: int,
    status_code: int,
    result: dict[str, Any],
    charge_id: str | None = None,
) -> bool:
    """Store the result of the request that holds the key; False if it no longer does (a
    reverse-by-key spent the key of a request it took for dead)."""
    done = await db.execute(
        _FINISH,
        {"record": record_id, "code": status_code, "stored": result, "charge": charge_id},
    )
    return bool(getattr(done, "rowcount", 0))


_RECORDS = cast(Table, IdempotencyRecord.__table__)
_FINISH = (  # Core, built once: no ORM bulk-update machinery on the hot path
    update(_RECORDS)
    .where(
        _RECORDS.c.id == bindparam("record"),
        _RECORDS.c.state == IdempotencyState.in_progress,
    )
    .values(
        state=IdempotencyState.done,
        status_code=bindparam("code"),
        result=bindparam("stored"),
        charge_id=bindparam("charge"),
    )
)


async def release(db: AsyncSession, *, record_id: int) -> None:
    """Forget a claim whose result is not stored (401, 5xx): a retry runs afresh."""
    await db.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.id == record_id,
            IdempotencyRecord.state == IdempotencyState.in_progress,
        )
    )


async def spend(db: AsyncSession, *, terminal_id: str, key: str, now: datetime) -> bool:
    """Mark a key that made no charge as spent for 24 h (§4.4); False if a request claimed
    it meanwhile."""
    spent = await _insert_if_free(
        db,
        now=now,
        values={
            "terminal_id": terminal_id,
            "idempotency_key": key,
            "method": "POST",
            "path": "",
            "fingerprint": None,
            "state": IdempotencyState.spent_by_reverse,
            "status_code": None,
            "result": None,
            "charge_id": None,
            "created_at": now,
            "expires_at": now + RETENTION,
        },
    )
    return spent is not None
