"""The sandbox processor (PROTOCOL §4.6), the default: answers decided by the card number."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.db import NativePool, insert_for
from viopay.metrics import ORIGIN, count_transaction
from viopay.payments.cards import is_expired
from viopay.payments.models import SandboxLedgerEntry
from viopay.payments.native import Compiled
from viopay.payments.processors.base import (
    Authorization,
    AuthorizationRequest,
    ChargeRef,
    ProcessorFailure,
    ProcessorRecord,
    ProcessorTimedOut,
)
from viopay_device.protocol.errors import PinBlockError
from viopay_device.protocol.pinblock import decipher_pin_block

APPROVED = "00"
# PAN → (response code, decline reason); approvals and the special rows are handled apart.
DECLINES: dict[str, tuple[str, str]] = {
    "4000000000000002": ("05", "card_declined"),
    "4000000000009995": ("51", "insufficient_funds"),
    "4000000000000069": ("54", "expired_card"),
    "4000000000000127": ("55", "incorrect_pin"),
}
PROCESSOR_ERROR_PAN = "4000000000000119"
TIMEOUT_PAN = "4000000000000259"
EXPIRED = ("54", "expired_card")
INCORRECT_PIN = ("55", "incorrect_pin")
_AUTH_CODE_ALPHABET = string.ascii_uppercase + string.digits


def authorization_code() -> str:
    """6 upper-case letters and digits, from one read of the system's random source (the
    digits of a 64-bit number in base 36: 36⁶ is far below 2⁶⁴, so every code is as likely)."""
    n, code = int.from_bytes(secrets.token_bytes(8)), []
    for _ in range(6):
        n, digit = divmod(n, 36)
        code.append(_AUTH_CODE_ALPHABET[digit])
    return "".join(code)


@dataclass(frozen=True)
class LedgerEntry:
    """A row of ``sandbox_ledger`` (:class:`SandboxLedgerEntry`) as a plain value: what the
    sandbox writes and answers from, without an ORM instance per call."""

    reference: str
    operation: str
    target: str | None
    amount: int | None
    approved: bool
    created_at: datetime
    response_code: str | None = None
    authorization_code: str | None = None
    decline_reason: str | None = None
    emv_response: str | None = None
    undone_by: str | None = None

    @classmethod
    def of(cls, row: SandboxLedgerEntry) -> LedgerEntry:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


def emv_response(response_code: str, auth_code: str | None) -> str:
    """TLV: 8A (authorisation response code) and, on approval, 89 (authorisation code)."""
    tlv = "8A02" + response_code.encode("ascii").hex().upper()
    if auth_code is not None:
        tlv += "8906" + auth_code.encode("ascii").hex().upper()
    return tlv


_LEDGER_INSERTS: dict[str, Any] = {}


def _ledger_insert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING reference, built once per dialect."""
    statement = _LEDGER_INSERTS.get(dialect)
    if statement is None:
        table = cast(Table, SandboxLedgerEntry.__table__)
        statement = insert_for(dialect)(table).on_conflict_do_nothing().returning(table.c.reference)
        _LEDGER_INSERTS[dialect] = statement
    return statement


_LEDGER_PG = Compiled.of(_ledger_insert("postgresql"))


class SandboxProcessor:
    """Order (§4.6): expired card → 54; PAN ...0127 → 55; a PIN block that does not decipher
    under the TPK → 55; then the table; any other valid card is approved.

    Its ledger is a table of our database (``sandbox_ledger``), written in the sandbox's own
    short transaction as a real acquirer would on its side, so :meth:`lookup` can answer crash
    recovery. A call repeated with a reference already in the ledger answers what was recorded
    and does nothing more. ``latency_ms`` (``VIOPAY_SANDBOX_LATENCY_MS``) is spent half before
    and half after the ledger write: a server killed "during the call" may have been heard or
    not, as with a real network.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        latency_ms: int = 0,
        native: NativePool | None = None,
    ) -> None:
        self._sessions = sessions
        self._native = native  # PostgreSQL: the common insert through asyncpg's own pool
        self._half_latency = latency_ms / 2000

    def __repr__(self) -> str:
        return f"SandboxProcessor(latency_ms={int(self._half_latency * 2000)})"

    async def _wait(self) -> None:
        if self._half_latency:
            await asyncio.sleep(self._half_latency)

    async def _record(self, entry: LedgerEntry, *, undo: str | None = None) -> LedgerEntry:
        """Insert ``entry`` unless its reference is known (then answer the known one); an undo
        marks the authorisation ``undo`` names."""
        if self._sessions is None:
            return entry
        token = ORIGIN.set("processor")  # the acquirer's own work, counted apart from ours
        try:
            return await self._insert(entry, undo)
        finally:
            ORIGIN.reset(token)

    async def _insert(self, entry: LedgerEntry, undo: str | None) -> LedgerEntry:
        """One INSERT … ON CONFLICT DO NOTHING; the known entry is read only on a repeat."""
        assert self._sessions is not None
        values = dict(vars(entry))  # its fields are the table's columns (a test holds this)
        if undo is None:
            inserted = await self._insert_alone(values)
            if inserted:
                return entry
        async with self._sessions() as db, db.begin():
            inserted = await db.scalar(_ledger_insert(db.get_bind().dialect.name), values)
            if inserted is None:
                known = await db.get(SandboxLedgerEntry, entry.reference)
                assert known is not None
                return LedgerEntry.of(known)
            if undo is not None:
                await db.execute(
                    update(SandboxLedgerEntry)
                    .where(
                        SandboxLedgerEntry.reference == undo, SandboxLedgerEntry.undone_by.is_(None)
                    )
                    .values(undone_by=entry.reference)
                )
            return entry

    async def _insert_alone(self, values: dict[str, Any]) -> bool:
        """The common case, an entry that changes no other: one autocommitted statement (no
        BEGIN and COMMIT round trips); False when the reference is already known."""
        assert self._sessions is not None
        if self._native is not None:
            async with self._native.connection() as conn:
                count_transaction()
                known = await conn.fetchval(_LEDGER_PG.sql, *_LEDGER_PG.args(values))
            return known is not None
        engine = self._sessions.kw["bind"]
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            inserted = await conn.scalar(_ledger_insert(conn.dialect.name), values)
        return inserted is not None

    async def authorize(self, request: AuthorizationRequest) -> Authorization:
        await self._wait()
        decline = self._decline(request)
        if decline is None and request.card.pan == PROCESSOR_ERROR_PAN:
            raise ProcessorFailure("sandbox processor error")  # nothing happened: no record
        entry = _authorization_entry(request, decline, now=request.now)
        entry = await self._record(entry)
        if decline is None and request.card.pan == TIMEOUT_PAN:
            raise ProcessorTimedOut("sandbox processor timeout")  # authorised, answer lost
        await self._wait()
        return _authorization(entry)

    def _decline(self, request: AuthorizationRequest) -> tuple[str, str] | None:
        card = request.card
        if is_expired(card.expiry, now=request.now):
            return EXPIRED
        if card.pan == "4000000000000127":
            return INCORRECT_PIN
        if request.pin is not None and not _pin_deciphers(
            request.pin.block, request.pin.tpk, card.pan
        ):
            return INCORRECT_PIN
        return DECLINES.get(card.pan)

    async def _act(
        self, operation: str, charge: ChargeRef, reference: str, amount: int | None
    ) -> None:
        await self._wait()
        entry = LedgerEntry(
            reference=reference,
            operation=operation,
            target=charge.processor_reference,
            amount=amount,
            approved=True,
            created_at=datetime.now(UTC),
        )
        await self._record(
            entry, undo=None if operation == "refund" else charge.processor_reference
        )
        await self._wait()

    async def refund(
        self, charge: ChargeRef, *, reference: str, refund_id: str, amount: int
    ) -> None:
        await self._act("refund", charge, reference, amount)

    async def void(self, charge: ChargeRef, *, reference: str) -> None:
        await self._act("void", charge, reference, None)

    async def reverse(self, charge: ChargeRef, *, reference: str) -> None:
        await self._act("reverse", charge, reference, None)

    async def lookup(self, reference: str) -> ProcessorRecord | None:
        if self._sessions is None:
            return None
        token = ORIGIN.set("processor")
        try:
            async with self._sessions() as db:
                entry = await db.get(SandboxLedgerEntry, reference)
        finally:
            ORIGIN.reset(token)
        if entry is None:
            return None
        if entry.operation != "authorize":
            return ProcessorRecord(reference, entry.operation)
        return ProcessorRecord(
            reference, "authorize", _authorization(entry), undone=entry.undone_by is not None
        )


def _authorization_entry(
    request: AuthorizationRequest, decline: tuple[str, str] | None, *, now: datetime
) -> LedgerEntry:
    code, reason = decline if decline is not None else (APPROVED, None)
    auth_code = authorization_code() if decline is None else None
    return LedgerEntry(
        reference=request.reference,
        operation="authorize",
        target=None,
        amount=request.amount,
        approved=decline is None,
        response_code=code,
        authorization_code=auth_code,
        decline_reason=reason,
        emv_response=emv_response(code, auth_code) if request.emv is not None else None,
        created_at=now,
    )


def _authorization(entry: LedgerEntry | SandboxLedgerEntry) -> Authorization:
    return Authorization(
        approved=entry.approved,
        response_code=entry.response_code or APPROVED,
        authorization_code=entry.authorization_code,
        decline_reason=entry.decline_reason,
        emv_response=entry.emv_response,
        processor_reference=entry.reference,
    )


def _pin_deciphers(block: str, tpk: bytes, pan: str) -> bool:
    try:
        decipher_pin_block(tpk=tpk, pin_block=block, pan=pan)
    except PinBlockError:
        return False
    return True
