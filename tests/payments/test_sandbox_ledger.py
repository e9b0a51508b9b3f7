"""The sandbox's ledger in the database (PROTOCOL §4.6, §4.7): every call under its reference,
a repeated reference answered from the ledger without acting twice, lookups for recovery, and
``VIOPAY_SANDBOX_LATENCY_MS``. Runs on both backends (the ``runtime`` fixture)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from support.helpers import present
from viopay.payments.cards import check_card
from viopay.payments.intents import new_reference
from viopay.payments.models import SandboxLedgerEntry
from viopay.payments.processors import (
    AuthorizationRequest,
    ChargeRef,
    ProcessorFailure,
    ProcessorTimedOut,
    SandboxProcessor,
)
from viopay.payments.processors.sandbox import LedgerEntry, authorization_code
from viopay.runtime import Runtime


def request(pan: str, reference: str) -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference,
        charge_id="ch_" + secrets.token_hex(4),
        terminal_id="TID-1",
        merchant_id="mer_1",
        amount=1250,
        currency="USD",
        entry_mode="chip",
        card=check_card(pan=pan, expiry="3012", track2=None, cardholder_name=None),
        pin=None,
        emv=None,
        order_reference=None,
        now=datetime.now(UTC),
    )


async def entries(runtime: Runtime, reference: str) -> int:
    async with runtime.sessions() as db:
        return present(
            await db.scalar(
                select(func.count())
                .select_from(SandboxLedgerEntry)
                .where(SandboxLedgerEntry.reference == reference)
            )
        )


async def test_an_authorisation_is_recorded_and_answered_again_for_its_reference(
    runtime: Runtime,
) -> None:
    sandbox, ref = SandboxProcessor(runtime.sessions), new_reference()
    first = await sandbox.authorize(request("4242424242424242", ref))
    again = await sandbox.authorize(request("4242424242424242", ref))
    assert first.approved and again.authorization_code == first.authorization_code
    assert await entries(runtime, ref) == 1
    found = await sandbox.lookup(ref)
    assert found is not None and found.authorization == first and not found.undone


async def test_declines_timeouts_and_errors_in_the_ledger(runtime: Runtime) -> None:
    sandbox = SandboxProcessor(runtime.sessions)
    declined, timed_out, failed = new_reference(), new_reference(), new_reference()
    assert not (await sandbox.authorize(request("4000000000000002", declined))).approved
    assert present(present(await sandbox.lookup(declined)).authorization).response_code == "05"
    try:
        await sandbox.authorize(request("4000000000000259", timed_out))
    except ProcessorTimedOut:
        pass
    held = await sandbox.lookup(timed_out)  # authorised; only the answer was lost
    assert held is not None and present(held.authorization).approved
    try:
        await sandbox.authorize(request("4000000000000119", failed))
    except ProcessorFailure:
        pass
    assert await sandbox.lookup(failed) is None  # a processor error: nothing happened


async def test_a_reversal_undoes_its_authorisation_once(runtime: Runtime) -> None:
    sandbox, auth = SandboxProcessor(runtime.sessions), new_reference()
    await sandbox.authorize(request("4242424242424242", auth))
    charge = ChargeRef("ch_1", "TID-1", 1250, "USD", auth)
    await sandbox.reverse(charge, reference=auth + "-r")
    await sandbox.reverse(charge, reference=auth + "-r")
    assert present(await sandbox.lookup(auth)).undone
    assert present(await sandbox.lookup(auth + "-r")).operation == "reverse"
    assert await entries(runtime, auth + "-r") == 1
    refund = new_reference()
    await sandbox.refund(charge, reference=refund, refund_id="re_1", amount=100)
    assert present(await sandbox.lookup(refund)).operation == "refund"


async def test_latency_is_spent_on_every_call_as_an_asyncio_wait(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No wall-clock assertion: the waits are recorded (half before the ledger write, half after)
    # and are asyncio sleeps, so a slow processor blocks no worker.
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("viopay.payments.processors.sandbox.asyncio.sleep", recorded)
    sandbox = SandboxProcessor(runtime.sessions, latency_ms=400)
    await asyncio.gather(
        *(sandbox.authorize(request("4242424242424242", new_reference())) for _ in range(3))
    )
    await sandbox.reverse(ChargeRef("ch_1", "TID-1", 1, "USD", "vpr_x"), reference=new_reference())
    assert waits == [0.2] * 8
    waits.clear()
    await SandboxProcessor(runtime.sessions).authorize(request("4242424242424242", new_reference()))
    assert waits == []


def test_a_ledger_entry_holds_exactly_the_ledger_tables_columns() -> None:
    """The sandbox writes a LedgerEntry's fields as the row's values (no ORM instance)."""
    fields = {f.name for f in dataclasses.fields(LedgerEntry)}
    assert fields == {c.key for c in SandboxLedgerEntry.__table__.columns}


def test_authorisation_codes_are_six_letters_and_digits_and_vary() -> None:
    codes = {authorization_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isalnum() and c == c.upper() for c in codes)
    assert len(codes) == 200  # 36⁶ codes: a repeat in 200 would be a broken source
    assert len({c[0] for c in codes}) > 20 and len({c[5] for c in codes}) > 20
